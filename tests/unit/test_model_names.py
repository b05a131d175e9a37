"""What a spec's model name resolves to, and the ModelNotFound message a user reads."""

from __future__ import annotations

from pathlib import Path

from tempotrain_workers.model_names import model_not_found, resolve_model

OFFLINE = OSError("We couldn't connect to 'https://huggingface.co' to load the files")


def test_a_folder_on_the_volume_wins_then_an_absolute_folder_then_a_hub_id(
    tmp_path: Path,
) -> None:
    (tmp_path / "models" / "minilm").mkdir(parents=True)
    assert resolve_model("models/minilm", tmp_path) == str(tmp_path / "models" / "minilm")
    assert resolve_model(str(tmp_path), tmp_path / "elsewhere") == str(tmp_path)
    assert resolve_model("bert-base-uncased", tmp_path) == "bert-base-uncased"


def test_a_missing_folder_says_where_it_was_looked_for_not_only_that_the_hub_is_offline(
    tmp_path: Path,
) -> None:
    message = model_not_found("models/not-there", tmp_path, OFFLINE)
    assert message.startswith("model 'models/not-there' is not a folder on the snapshots volume")
    assert str(tmp_path / "models" / "not-there") in message
    assert "huggingface.co" in message  # the loader's words come after, not instead


def test_a_folder_that_is_there_but_not_a_model_says_so(tmp_path: Path) -> None:
    (tmp_path / "models" / "empty").mkdir(parents=True)
    message = model_not_found("models/empty", tmp_path, OSError("no config.json"))
    assert message == (
        f"model folder {tmp_path / 'models' / 'empty'} cannot be loaded (is it a saved "
        "model?): no config.json"
    )
    assert model_not_found("/no/such/model", tmp_path, OFFLINE) == (
        "model folder /no/such/model does not exist"
    )
