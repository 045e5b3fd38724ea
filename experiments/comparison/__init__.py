"""Many runs into one table: ``compare`` (objectives at one FLOPs budget, or a ladder of budgets),
``sweep`` (an ablation grid), and the tables, statistics and plots of their results."""
