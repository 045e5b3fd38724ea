"""TaskDataModule on GLUE: GLUE's task table, local files in the hub's schema (tsv, csv, jsonl, parquet),
the hub code path (mocked: no network in tests), tokenisation, dynamic padding, both sentence
orders, and clear errors on bad files."""

from __future__ import annotations

import datasets
import pandas as pd
import pytest
import torch

from downstream import glue
from downstream.data import TaskDataModule
from downstream.tasks import GLUE_TASKS, get_task
from tests.helpers import mentions
from tests.test_finetune import FIXTURES, make_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("glue-ckpt"))


def test_task_table_follows_the_paper():
    assert list(GLUE_TASKS) == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"]
    headline = {t: s.metric for t, s in GLUE_TASKS.items()}
    assert headline == {"cola": "mcc", "sst2": "accuracy", "mrpc": "accuracy", "stsb": "spearman", "qqp": "accuracy",
                        "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy"}
    assert GLUE_TASKS["mrpc"].metrics == ("accuracy", "f1") and GLUE_TASKS["qqp"].metrics == ("accuracy", "f1")
    assert GLUE_TASKS["stsb"].metrics == ("spearman", "pearson")
    assert GLUE_TASKS["stsb"].is_regression and GLUE_TASKS["stsb"].label_scale == pytest.approx(0.2)
    assert {t for t, s in GLUE_TASKS.items() if s.epochs == 10} == {"rte", "stsb"}
    assert {t for t, s in GLUE_TASKS.items() if s.both_orders} == {"mrpc", "stsb"}
    assert GLUE_TASKS["mnli"].val_splits == ("validation_matched", "validation_mismatched")
    assert GLUE_TASKS["mnli"].metric_suffix(1) == "_mismatched"
    # The hub's column names.
    assert GLUE_TASKS["qqp"].text_columns == ("question1", "question2")
    assert GLUE_TASKS["qnli"].text_columns == ("question", "sentence")
    assert GLUE_TASKS["mnli"].text_columns == ("premise", "hypothesis")
    assert get_task("SST-2") is GLUE_TASKS["sst2"] and get_task("docpkg").group == "offline"


def test_unknown_task_lists_valid_ones():
    with pytest.raises(ValueError) as info:
        TaskDataModule("unused", task="sst5")
    mentions(str(info.value), "sst5", *GLUE_TASKS, "docpkg", "docpkg-probe", "docpair")  # the task given, the valid ones


@pytest.mark.parametrize("task", ["sst2", "mrpc", "stsb", "mnli"])
def test_local_fixtures_load_and_tokenise(ckpt, task):
    dm = TaskDataModule(ckpt, task=task, data_dir=str(FIXTURES), batch_size=4, both_orders=False)
    dm.setup("fit")
    spec = dm.spec
    raw = dm.load_raw()
    assert set(raw) == {"train", *spec.val_splits}
    assert len(dm.datasets["train"]) == len(raw["train"]) > 0
    loaders = dm.val_dataloader()
    loaders = loaders if isinstance(loaders, list) else [loaders]
    assert len(loaders) == len(spec.val_splits)  # MNLI: matched and mismatched
    batch = next(iter(dm.train_dataloader()))
    B, T = batch["input_ids"].shape
    assert B == 4 and batch["attention_mask"].shape == (B, T)
    assert (batch["input_ids"][:, 0] == dm.tokenizer.cls_token_id).all()
    if len(spec.text_columns) == 2:
        # Segment ids: 0 for [CLS] A [SEP], 1 for B [SEP].
        assert batch["token_type_ids"].shape == (B, T) and (batch["token_type_ids"].amax(dim=1) == 1).all()
    else:
        assert "token_type_ids" not in batch
    if spec.is_regression:
        assert batch["labels"].dtype == torch.float32
        assert list(dm.datasets["train"]["labels"]) == pytest.approx([float(y) / 5 for y in raw["train"]["label"]])
    else:
        assert batch["labels"].dtype == torch.long
        assert set(dm.datasets["train"]["labels"]) == set(range(spec.num_labels))


def test_mnli_text_labels_and_dev_file_names(ckpt):
    # The MNLI fixture spells labels as text and names its dev files dev_matched/dev_mismatched.
    raw = TaskDataModule(ckpt, task="mnli", data_dir=str(FIXTURES)).load_raw()
    first = pd.read_csv(FIXTURES / "mnli" / "train.tsv", sep="\t").label.tolist()
    names = GLUE_TASKS["mnli"].label_names
    assert [names[i] for i in raw["train"]["label"]] == first
    assert len(raw["validation_mismatched"]) == 9


def test_both_orders_doubles_symmetric_pair_tasks(ckpt):
    for task, doubled in (("mrpc", True), ("stsb", True), ("mnli", False), ("sst2", False)):
        dm = TaskDataModule(ckpt, task=task, data_dir=str(FIXTURES), both_orders=True)
        dm.setup("fit")
        n = len(dm.load_raw()["train"])
        assert len(dm.datasets["train"]) == (2 * n if doubled else n), task
    # The second half is the first with the sentences swapped.
    dm = TaskDataModule(ckpt, task="mrpc", data_dir=str(FIXTURES), both_orders=True)
    dm.setup("fit")
    raw, tok = dm.load_raw()["train"], dm.tokenizer
    n = len(raw)
    swapped = tok(raw[0]["sentence2"], raw[0]["sentence1"])["input_ids"]
    assert dm.datasets["train"][n]["input_ids"] == swapped
    assert dm.datasets["train"][n]["labels"] == raw[0]["label"]
    # Dev sets are never augmented.
    assert len(dm.datasets["validation"]) == len(dm.load_raw()["validation"])


def test_dynamic_padding_and_truncation(ckpt):
    dm = TaskDataModule(ckpt, task="mrpc", data_dir=str(FIXTURES), eval_batch_size=3, max_seq_length=12)
    dm.setup("fit")
    lengths = [len(x) for x in dm.datasets["validation"]["input_ids"]]
    assert max(lengths) == 12  # long pairs are truncated to max_seq_length
    for i, batch in enumerate(dm.val_dataloader()):
        # Each batch is padded to its own longest example, not to max_seq_length.
        assert batch["input_ids"].shape[1] == max(lengths[3 * i: 3 * i + 3])
        assert (batch["attention_mask"].sum(1) == torch.tensor(lengths[3 * i: 3 * i + 3])).all()


def test_tsv_keeps_quotes_and_na_as_text(ckpt):
    raw = TaskDataModule(ckpt, task="sst2", data_dir=str(FIXTURES)).load_raw()
    sentences = list(raw["train"]["sentence"])
    assert 'the film " works , mostly' in sentences and "NA" in sentences


def test_explicit_files_parquet_json_and_limits(ckpt, tmp_path):
    rows = pd.read_json(FIXTURES / "mrpc" / "train.jsonl", lines=True)
    rows.to_parquet(tmp_path / "train.parquet")
    rows.head(5).to_json(tmp_path / "dev.json", orient="records")  # a JSON array, not JSON lines
    dm = TaskDataModule(ckpt, task="mrpc", data_files={"train": str(tmp_path / "train.parquet"),
                                                       "validation": str(tmp_path / "dev.json")},
                        max_train_examples=10, max_eval_examples=3, both_orders=False)
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 10 and len(dm.datasets["validation"]) == 3
    # The subset is fixed: a second module picks the same examples.
    again = TaskDataModule(ckpt, task="mrpc", data_files=dm.data_files, max_train_examples=10, both_orders=False)
    again.setup("fit")
    assert list(again.datasets["train"]["input_ids"]) == list(dm.datasets["train"]["input_ids"])


def test_missing_column_names_column_and_file(ckpt, tmp_path):
    (tmp_path / "qnli").mkdir()
    (tmp_path / "qnli" / "train.csv").write_text("question,sentence,label\nwho ?,me .,0\n")
    (tmp_path / "qnli" / "validation.csv").write_text("question,text,label\nwho ?,me .,0\n")
    with pytest.raises(ValueError) as info:
        TaskDataModule(ckpt, task="qnli", data_dir=str(tmp_path)).load_raw()
    mentions(str(info.value), str(tmp_path / "qnli" / "validation.csv"), "sentence", "qnli")


def test_bad_labels_and_missing_files(ckpt, tmp_path):
    (tmp_path / "rte").mkdir()
    (tmp_path / "rte" / "train.tsv").write_text("sentence1\tsentence2\tlabel\na .\tb .\t-1\n")
    with pytest.raises(FileNotFoundError) as info:
        TaskDataModule(ckpt, task="rte", data_dir=str(tmp_path)).load_raw()
    mentions(str(info.value), str(tmp_path / "rte"), "validation.tsv")  # where it looked, what it looked for
    (tmp_path / "rte" / "dev.tsv").write_text("sentence1\tsentence2\tlabel\na .\tb .\tmaybe\n")
    with pytest.raises(ValueError) as info:
        TaskDataModule(ckpt, task="rte", data_dir=str(tmp_path)).load_raw()
    mentions(str(info.value), str(tmp_path / "rte" / "train.tsv"), -1, "rte")  # the file, the label, the task
    with pytest.raises(FileNotFoundError) as info:
        TaskDataModule(ckpt, task="cola", data_dir=str(tmp_path)).load_raw()
    mentions(str(info.value), "cola", str(tmp_path))


def test_hub_path_is_nyu_mll_glue(ckpt, monkeypatch):
    """The default loads ``nyu-mll/glue`` with the task as config; here the download is replaced."""
    local = TaskDataModule(ckpt, task="sst2", data_dir=str(FIXTURES)).load_raw()
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"]),
                                  "idx": datasets.Value("int32")})

    def with_idx(ds):
        return datasets.Dataset.from_dict({**ds.to_dict(), "idx": list(range(len(ds)))}, features=features)

    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name))
        return datasets.DatasetDict({"train": with_idx(local["train"]), "validation": with_idx(local["validation"]),
                                     "test": with_idx(local["validation"])})

    monkeypatch.setattr(glue.datasets, "load_dataset", fake_load_dataset)
    dm = TaskDataModule(ckpt, task="sst2")
    dm.setup("fit")
    assert calls == [("nyu-mll/glue", "sst2")]
    assert dm.load_raw()["train"].column_names == ["sentence", "label"]
    assert len(dm.datasets["validation"]) == len(local["validation"])


def test_max_length_is_capped_at_the_encoders_positions(tmp_path):
    """Small pre-training presets may have fewer positions than GLUE's usual 128 tokens."""
    from transformers import ElectraConfig, ElectraForPreTraining

    from tests.test_finetune import fixture_texts, train_tokenizer

    tokenizer = train_tokenizer(fixture_texts())
    config = ElectraConfig(vocab_size=len(tokenizer), embedding_size=16, hidden_size=32, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=64, max_position_embeddings=16)
    ElectraForPreTraining(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    dm = TaskDataModule(str(tmp_path), task="mrpc", data_dir=str(FIXTURES), max_seq_length=128)
    with pytest.warns(UserWarning, match="truncating to 16"):
        dm.setup("fit")
    assert max(len(x) for x in dm.datasets["train"]["input_ids"]) == 16
