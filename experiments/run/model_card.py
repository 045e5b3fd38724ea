"""Model cards of an export: a ``README.md`` with Hugging Face metadata, and ``isoflop.json``, in every network's
directory.

The card is written from the provenance (:mod:`experiments.run.provenance`) alone, so it can be rewritten at any
time from the ``isoflop.json`` beside it: ``isoflop compare`` rewrites the main network's card once its downstream
scores exist (:func:`add_downstream`). Its metadata is what the Hub reads (``library_name``, ``tags``,
``pipeline_tag``, ``datasets``, a ``model-index`` of the downstream scores), built with ``huggingface_hub``'s
``ModelCardData`` and ``EvalResult``; its text says what the network is, how it was trained, at what cost, on
what, and how to load it. Every file is written whole and renamed into place
(:func:`datamodules.cache.write_atomic`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from datamodules.cache import write_atomic
from experiments.run.provenance import PROVENANCE_FILE

CARD_FILE = "README.md"

# The headline metrics of isoflop's tasks (downstream.tasks) as the metric ids of Hugging Face's evaluate.
METRIC_IDS = {"accuracy": "accuracy", "mcc": "matthews_correlation", "spearman": "spearmanr", "pearson": "pearsonr",
              "f1": "f1", "macro_f1": "f1"}

# The classes an export's networks are saved as that transformers does not ship: isoflop's own.
ISOFLOP_CLASSES = {"DebertaV2ForReplacedTokenDetection", "DebertaV2ForMaskedLMWithEMD"}

CITATION = """\
@inproceedings{clark2020electra,
  title     = {{ELECTRA}: Pre-training Text Encoders as Discriminators Rather Than Generators},
  author    = {Clark, Kevin and Luong, Minh-Thang and Le, Quoc V. and Manning, Christopher D.},
  booktitle = {International Conference on Learning Representations},
  year      = {2020},
  url       = {https://arxiv.org/abs/2003.10555}
}"""

CONVENTIONS = {
    "actual": "the matrix multiplies isoflop's implementation runs, backward counted as twice the forward",
    "paper": "the ELECTRA paper's accounting (its official flops_computation.py: backward as costly as the forward, "
             "embedding lookups and element-wise operations charged)",
}


# -- the networks of an export -------------------------------------------------------------------------


def network_folders(export_dir: str | Path) -> list[str]:
    """The directories of an export that hold a network (a ``config.json``), relative to it; ``.`` first."""
    root = Path(export_dir)
    found = {config.parent.relative_to(root).as_posix() for config in root.rglob("config.json")}
    return sorted(found, key=lambda rel: (rel != ".", rel))


def network_role(rel: str, architecture: str) -> str:
    """What a network of an export is: the generator, the discriminator, a masked LM ..."""
    if rel == "generator":
        return "generator"
    if rel == "discriminator_mlm":
        return "discriminator with its MLM head"
    if "ForMaskedLM" in architecture:
        return "masked LM"
    if architecture.endswith(("ForPreTraining", "ForReplacedTokenDetection")):
        return "discriminator"
    return "encoder"


def parameter_count(folder: Path) -> int | None:
    """The parameters saved in a network's safetensors files (tied tables once), or None without them."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return total


def network_record(folder: Path, rel: str, repo: str | None = None) -> dict[str, Any]:
    """One network of an export: its directory, class, role, parameters, pipeline and hub repository."""
    architecture = (json.loads((folder / "config.json").read_text()).get("architectures") or ["unknown"])[0]
    # fill-mask only where the pipeline's AutoModelForMaskedLM gives the network as trained: not a DeBERTa masked LM
    # with the enhanced mask decoder (loaded without it), not a discriminator (no pipeline runs its head).
    pipeline = "fill-mask" if architecture.endswith("ForMaskedLM") else None
    return {"folder": rel, "architecture": architecture, "role": network_role(rel, architecture),
            "parameters": parameter_count(folder), "pipeline_tag": pipeline, "hub_repo": repo}


def kebab(name: str) -> str:
    """``ReplacedTokenDetection`` -> ``replaced-token-detection``, ``MaskedLM-seed1`` -> ``masked-lm-seed1``,
    ``discriminator_mlm`` -> ``discriminator-mlm``: a name as a hub repository name's words."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name)
    return re.sub(r"[^A-Za-z0-9.]+", "-", words).strip("-.").lower()


def default_name(record: dict[str, Any]) -> str:
    """A name for the network when it has no hub repository: isoflop-<objective>-<family>-<size>[-<folder>]."""
    net, encoder = record["network"], record["encoder"]
    folder = "" if net["folder"] == "." else "-" + kebab(net["folder"])
    return f"isoflop-{kebab(record['objective']['name'])}-{encoder['family']}-{encoder['size']}{folder}"


# -- writing ----------------------------------------------------------------------------------------------


def write_cards(export_dir: str | Path, record: dict[str, Any], repos: dict[str, str] | None = None) -> list[Path]:
    """``README.md`` and ``isoflop.json`` in every network directory of ``export_dir``, each written atomically.
    ``record``: the provenance (:func:`experiments.run.provenance.provenance`); its ``downstream`` scores go to
    the main network's card only (fine-tuning starts from it). ``repos``: hub repositories by folder, for the
    cards' loading code."""
    root, written = Path(export_dir), []
    base = {k: v for k, v in record.items() if k != "network"}
    for rel in network_folders(root):
        folder = root / rel
        own = {**base, "network": network_record(folder, rel, (repos or {}).get(rel)),
               "downstream": base.get("downstream") if rel == "." else None}
        write_atomic(folder / PROVENANCE_FILE, json.dumps(own, indent=2) + "\n")
        write_atomic(folder / CARD_FILE, render_card(own))
        written.append(folder / CARD_FILE)
    return written


def read_provenance(folder: str | Path) -> dict[str, Any]:
    """The ``isoflop.json`` of a network directory (a one-line error when there is none)."""
    path = Path(folder) / PROVENANCE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: export the checkpoint again with isoflop export") from None


def add_downstream(export_dir: str | Path, downstream: dict[str, Any] | None,
                   repos: dict[str, str] | None = None) -> list[Path]:
    """Rewrite an export's cards with the main network's downstream scores (``{"tasks": {task: {...}}, ...}``:
    :func:`experiments.comparison.results.card_scores`), keeping each network's hub repository unless
    ``repos`` names one."""
    root = Path(export_dir)
    record = read_provenance(root)
    kept = {rel: read_provenance(root / rel).get("network", {}).get("hub_repo") for rel in network_folders(root)}
    merged = {rel: repo for rel, repo in {**kept, **(repos or {})}.items() if repo}
    return write_cards(root, {**record, "downstream": downstream}, merged)


# -- the card -----------------------------------------------------------------------------------------------


def eval_results(record: dict[str, Any]) -> list:
    """The downstream scores as ``huggingface_hub.EvalResult`` objects: one per task, its headline metric's median in
    points (the task average is no dataset, and stays in the text)."""
    from huggingface_hub import EvalResult

    from downstream.tasks import get_task

    results = []
    for task, score in ((record.get("downstream") or {}).get("tasks") or {}).items():
        try:
            spec = get_task(task)
        except ValueError:
            continue  # "average", or a task this isoflop does not know
        if spec.group == "own":
            continue  # a user's own data (downstream.own): no dataset the Hub knows; its score stays in the text
        glue = spec.group == "glue"
        dataset_type, dataset_name = ("nyu-mll/glue", f"GLUE {spec.name.upper()}") if glue else \
            (spec.dataset, f"{spec.dataset} (isoflop offline task)")
        if spec.group == "squad":
            from downstream.squad import HUB_DATASETS

            dataset_type, dataset_name = HUB_DATASETS[spec.name], {"squad": "SQuAD 1.1", "squad2": "SQuAD 2.0"}[spec.name]
        results.append(EvalResult(
            task_type="question-answering" if spec.group == "squad" else "text-classification",
            task_name=task + (" (linear probe)" if spec.probe else ""), dataset_type=dataset_type, dataset_name=dataset_name,
            dataset_config=None if spec.group == "squad" else spec.name, dataset_split=spec.val_splits[0],
            metric_type=METRIC_IDS.get(score["metric"], score["metric"]), metric_value=round(score["median"], 4),
            metric_name=f"{score['metric']} (points, median of {score['seeds']} fine-tuning seeds)"))
    return results


def card_data(record: dict[str, Any]):
    """The card's metadata (``huggingface_hub.ModelCardData``)."""
    from huggingface_hub import ModelCardData

    net, data = record["network"], record["data"]
    role_tag = {"generator": "generator", "masked LM": "masked-lm"}.get(net["role"], "discriminator")
    tags = list(dict.fromkeys(["isoflop", *record["objective"]["tags"], record["encoder"]["family"], role_tag]))
    results = eval_results(record)
    name = net["hub_repo"].split("/")[-1] if net.get("hub_repo") else default_name(record)
    return ModelCardData(library_name="transformers", tags=tags, pipeline_tag=net["pipeline_tag"],
                         datasets=[data["dataset"]] if data["source"] == "hub" and data["dataset"] else None,
                         model_name=name if results else None, eval_results=results or None)


def render_card(record: dict[str, Any]) -> str:
    """The whole ``README.md``: YAML metadata, then the text."""
    sections = [_introduction(record), _training(record), _downstream(record), _loading(record), _method(record)]
    return f"---\n{card_data(record).to_yaml()}\n---\n\n" + "\n\n".join(s for s in sections if s) + "\n"


def _flops(value: float | None) -> str:
    return "not recorded" if value is None else f"{value:.4e}"


def _count(value: int | None) -> str:
    return "not recorded" if value is None else f"{value:,}"


def _introduction(record: dict[str, Any]) -> str:
    objective, encoder, net = record["objective"], record["encoder"], record["network"]
    title = f"# {objective['name']}: {net['role']} ({encoder['family']} {encoder['size']})"
    text = (f"The {net['role']} of an encoder pre-trained with isoflop's `{objective['name']}` objective "
            f"(`{objective['class_path']}`): {objective['summary']}")
    if net["folder"] != ".":
        text += (" It is a by-product of pre-training; the network isoflop fine-tunes and compares is the main one, "
                 "exported beside it.")
    return f"{title}\n\n{text}"


def _shape(encoder: dict[str, Any]) -> str:
    return (f"{encoder['family']} family, size {encoder['size']}: {encoder['num_layers']} layers, hidden "
            f"{encoder['hidden_size']}, {encoder['num_heads']} heads, feed-forward {encoder['intermediate_size']}, "
            f"embeddings {encoder['embedding_size']}, vocabulary {encoder['vocab_size']}")


def _data(data: dict[str, Any]) -> str:
    kind = data["source"]
    if kind == "embedded":
        return "isoflop's embedded corpus (CPython standard-library documentation, PSF License; see isoflop's NOTICE)"
    if kind == "hub":
        config = f", configuration `{data['dataset_config']}`" if data.get("dataset_config") else ""
        return f"`{data['dataset']}` from the Hugging Face Hub{config}"
    if kind == "files":
        files = data.get("data_files") or []
        files = [files] if isinstance(files, str) else files  # one path or glob, as --data.data_files takes it
        return "local files: " + ", ".join(f"`{Path(str(f)).name}`" for f in files)
    if kind in ("disk", "synthetic"):
        return f"{'a save_to_disk directory' if kind == 'disk' else 'a synthetic source'}: `{data['dataset']}`"
    if data.get("dataset"):
        return f"`{data['dataset']}` (a hub dataset or a local directory: not recorded which)"
    return "not recorded"


def _training_rows(record: dict[str, Any]) -> list[tuple[str, str]]:
    flops, train, data, tok = record["flops"], record["training"], record["data"], record["tokenizer"]
    counted = flops["counted_convention"]
    rows = [("Objective", f"`{record['objective']['name']}`"), ("Encoder", _shape(record["encoder"]))]
    if record["network"]["parameters"] is not None:
        rows.append(("Parameters (this network)", f"{record['network']['parameters']:,}"))
    for convention in ("actual", "paper"):
        how = "counted" if convention == counted else "derived from the counted total"
        rows.append((f"Training FLOPs, {convention} convention",
                     _flops(flops[convention]) + (f" ({how})" if flops[convention] is not None else "")))
    if flops["budget"] is not None:
        rows.append(("FLOPs budget", f"{flops['budget']:.4e} ({counted} convention)"))
    seed, source = train["seed_everything"], [tok["source"]] if tok["source"] else []
    tokenizer = "not recorded" if tok["class"] is None else ", ".join(
        [tok["class"], f"{tok['vocab_size']} tokens", *source, f"hash `{tok['hash']}`"])
    rows += [("Steps", _count(train["steps"])), ("Tokens", _count(train["tokens"])),
             ("Sequence length", _count(train["max_seq_length"])), ("Data", _data(data)),
             ("Data fingerprint", f"`{data['fingerprint_digest']}`" if data["fingerprint_digest"] else "not recorded"),
             ("Tokenizer", tokenizer),
             ("Seed (seed_everything)", "not recorded" if seed is None else str(seed))]
    return rows


def _training(record: dict[str, Any]) -> str:
    rows = "\n".join(f"| {k} | {v} |" for k, v in _training_rows(record))
    settings = {k: v for k, v in record["objective"]["hyper_parameters"].items() if v is not None}
    listed = ", ".join(f"`{k}` {json.dumps(v)}" for k, v in settings.items())
    text = ["## Training", "", "| | |", "|---|---|", rows, "",
            "Training FLOPs are given in isoflop's two conventions: *actual*, " + CONVENTIONS["actual"] + "; *paper*, "
            + CONVENTIONS["paper"] + ". A convention the run did not count is derived from the counted total where "
            "every step had one cost, and is not recorded otherwise.", "",
            "Objective settings (the checkpoint's hyper-parameters; those left unset take the objective's defaults "
            f"for the family and size): {listed}."]
    val = record["training"].get("final_validation") or {}
    if "val/loss" in val:
        text += ["", f"Final validation loss: {val['val/loss']:.4f} (the objective's own loss on held-out text: not "
                 "comparable across objectives)."]
    reasons: dict[str, list[str]] = {}
    for key, why in (record.get("not_recorded") or {}).items():
        reasons.setdefault(why, []).append(f"`{key}`")
    if reasons:
        text += ["", "Not recorded: " + "; ".join(f"{', '.join(keys)}: {why}" for why, keys in reasons.items()) + "."]
    text += ["", f"Everything above, and the run's full configuration, is in `{PROVENANCE_FILE}` beside this card."]
    return "\n".join(text)


def _downstream(record: dict[str, Any]) -> str:
    tasks = ((record.get("downstream") or {}).get("tasks")) or {}
    if not tasks:
        return ""
    lines = ["## Downstream", "", "| task | metric | mean | median [95% interval] | seeds |", "|---|---|---:|---|---:|"]
    for task, s in tasks.items():
        lines.append(f"| {task} | {s['metric']} | {s['mean']:.2f} | {s['median']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}] "
                     f"| {s['seeds']} |")
    lines += ["", "Scores in points (x100) over the fine-tuning seeds of this encoder (isoflop finetune: the official "
              "ELECTRA recipe); the interval is a 95% percentile bootstrap of the median, as isoflop compare's "
              "results.md gives it. The average's scores are each seed's mean over the tasks. Offline tasks "
              "are built by isoflop from its embedded corpus, not hub datasets."]
    return "\n".join(lines)


def _loading(record: dict[str, Any]) -> str:
    net = record["network"]
    where = net.get("hub_repo") or ("path/to/export" + ("" if net["folder"] == "." else f"/{net['folder']}"))
    arch = net["architecture"]
    if arch in ISOFLOP_CLASSES:
        head = (f"from objectives.deberta import {arch}  # isoflop's class: transformers has none",
                f"model = {arch}.from_pretrained(\"{where}\")  # with the head it was trained with")
    elif net["pipeline_tag"] == "fill-mask":
        head = ("from transformers import AutoModelForMaskedLM",
                f"model = AutoModelForMaskedLM.from_pretrained(\"{where}\")  # with its MLM head")
    elif arch.endswith("ForPreTraining"):
        head = ("from transformers import AutoModelForPreTraining",
                f"model = AutoModelForPreTraining.from_pretrained(\"{where}\")  # with its detection head")
    else:
        head = ()
    lines = ["## How to load", "", "```python", "from transformers import AutoModel, AutoTokenizer", *head[:1], "",
             f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
             f'encoder = AutoModel.from_pretrained("{where}")  # the backbone, what fine-tuning starts from', *head[1:],
             "```"]
    if arch == "DebertaV2ForMaskedLMWithEMD":
        lines += ["", "`AutoModelForMaskedLM` loads this network without its enhanced mask decoder, silently: its "
                  "predictions are then not those it was trained to give. Use the class above."]
    return "\n".join(lines)


def _method(record: dict[str, Any]) -> str:
    family = record["encoder"]["family"]
    text = ("isoflop compares pre-training objectives at equal training FLOPs, as the ELECTRA paper does (Clark et al. "
            "2020), whose replaced token detection and ablations (Replace MLM, All-Tokens MLM, ELECTRA 15%) its "
            "objectives implement, beside BERT's masked language modelling (Devlin et al. 2019).")
    if family == "deberta-v2":
        text += " The encoder is DeBERTa's (He et al. 2021, DeBERTaV3), with its disentangled relative attention."
    return f"## Method\n\n{text} Please cite the method as:\n\n```bibtex\n{CITATION}\n```"
