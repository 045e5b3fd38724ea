"""Publishing exports on the Hugging Face Hub: ``--push_to_hub`` of ``isoflop export`` and ``isoflop compare``.

One model repository per network, through ``huggingface_hub`` (``HfApi.create_repo``, then
``HfApi.upload_folder`` of the network's directory, card and ``isoflop.json`` included):

- ``isoflop export CKPT OUT --push_to_hub ORG/NAME``: the main network (the export's top directory, what
  fine-tuning loads) in ``ORG/NAME``, the generator in ``ORG/NAME-generator``, MLM + RTD's discriminator with its
  MLM head in ``ORG/NAME-discriminator-mlm``;
- ``isoflop compare --push_to_hub ORG/PREFIX``: each run's export as above under ``ORG/PREFIX-<run>`` (the run's
  name in lower case, words joined by ``-``: ``ORG/PREFIX-replaced-token-detection``,
  ``ORG/PREFIX-replaced-token-detection-generator``), and on a ladder (``--budgets``)
  ``ORG/PREFIX-<run>-budget-<FLOPs>``.

Everything that can be known before compute is checked first (:meth:`Publisher.checked`), each failure one line
(:class:`~experiments.errors.UsageError`, exit code 2): the repository names, ``HF_HUB_OFFLINE``, a token
(``HF_TOKEN`` or the one ``hf auth login`` saved), and that the Hub answers and accepts the token (``whoami``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from experiments.errors import UsageError, one_line
from experiments.run.model_card import kebab, network_folders, read_provenance

# The directories of an export that hold a network besides its top one (objectives' ``export``).
NETWORK_FOLDERS = ("generator", "discriminator_mlm")
_TRUE = ("1", "true", "yes", "on")


def repo_name(base: str, folder: str) -> str:
    """The repository of an export's network in ``folder`` (``.``: the main one) when the main one is ``base``."""
    return base if folder == "." else f"{base}-{kebab(folder)}"


def offline() -> bool:
    """Whether Hugging Face's offline mode is on (``HF_HUB_OFFLINE``, as set now or when huggingface_hub was
    imported)."""
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").strip().lower()
    return env in _TRUE or bool(constants.HF_HUB_OFFLINE)


def check_names(bases: list[str], option: str) -> None:
    """Every repository the bases give (each network's), valid as a hub name: a one-line error otherwise."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    for base in bases:
        if base.count("/") != 1 or not all(base.split("/")):
            raise UsageError(f"{option} {base}: give the repository as ORG/NAME (a user or organisation, then a name)")
        for repo in [base, *(repo_name(base, folder) for folder in NETWORK_FOLDERS)]:
            try:
                validate_repo_id(repo)
            except HFValidationError as err:
                raise UsageError(f"{option}: {repo!r} is no valid Hugging Face repository name ({one_line(err)}): "
                                 "choose a shorter or plainer one") from None


def hub_token(option: str, target: str) -> str:
    """The token to publish with, or a one-line error naming everything in the way (offline mode, no token)."""
    from huggingface_hub import get_token

    problems = []
    if offline():
        problems.append("HF_HUB_OFFLINE is set (unset it where the Hub can be reached)")
    try:
        token = get_token()
    except Exception as err:  # an OIDC exchange that failed (huggingface_hub raises then); no token either way
        token, detail = None, f" ({type(err).__name__}: {one_line(err)[:200]})"
    else:
        detail = ""
    if not token:
        problems.append(f"no Hugging Face token{detail} (set HF_TOKEN, or run `hf auth login`)")
    if problems:
        raise UsageError(f"{option} {target}: cannot publish: {'; '.join(problems)}; or leave out {option}. "
                         "Nothing was computed")
    return token


def check_reachable(token: str, option: str, target: str) -> None:
    """That the Hub answers and knows the token (``whoami``): a one-line error otherwise."""
    import huggingface_hub

    try:
        huggingface_hub.HfApi(token=token).whoami()
    except Exception as err:  # httpx's and huggingface_hub's errors alike mean "cannot publish from here"
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status == 401:
            raise UsageError(f"{option} {target}: the Hugging Face Hub refused the token (401): set a valid HF_TOKEN "
                             "or run `hf auth login` again. Nothing was computed") from None
        raise UsageError(f"{option} {target}: cannot reach the Hugging Face Hub ({type(err).__name__}: "
                         f"{one_line(err)[:200]}): publish from a machine with network access, or leave out {option}. "
                         "Nothing was computed") from None


@dataclass(frozen=True)
class Publisher:
    """Where and with what token an export is published; made by :meth:`checked`, before any compute."""

    target: str
    token: str
    option: str = "--push_to_hub"

    @classmethod
    def checked(cls, target: str, option: str = "--push_to_hub") -> Publisher:
        """``target`` (ORG/NAME or ORG/PREFIX) checked as a name, then the token and the Hub: one-line errors."""
        check_names([target], option)
        token = hub_token(option, target)
        check_reachable(token, option, target)
        return cls(target, token, option)

    def check_names(self, bases: list[str]) -> None:
        """The repository names of the runs to publish (known once a comparison is planned), before any compute."""
        check_names(bases, self.option)

    def push(self, export_dir: str | Path, base: str) -> list[str]:
        """Create (when new) and upload one repository per network of ``export_dir``; the lines that say where."""
        import huggingface_hub

        root, api, lines = Path(export_dir), huggingface_hub.HfApi(token=self.token), []
        folders = network_folders(root)
        for folder in folders:
            repo = repo_name(base, folder)
            nested = [f"{other}/*" for other in folders if folder == "." and other != "."]  # their own repositories
            network = read_provenance(root / folder)
            api.create_repo(repo, repo_type="model", exist_ok=True)
            api.upload_folder(repo_id=repo, folder_path=str(root / folder), repo_type="model",
                              ignore_patterns=nested or None,
                              commit_message=f"isoflop: {network['objective']['name']} {network['network']['role']}")
            lines.append(f"published {root / folder} to https://huggingface.co/{repo}")
        return lines
