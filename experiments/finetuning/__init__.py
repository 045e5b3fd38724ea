"""Fine-tuning: an encoder judged on downstream tasks over several seeds, the ELECTRA way."""
