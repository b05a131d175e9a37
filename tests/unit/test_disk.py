from pathlib import Path

import pytest
from tempotrain_dev.disk import NotEnoughDisk, require_free


def test_enough_free_disk_passes_and_a_missing_path_is_judged_by_its_parent(
    tmp_path: Path,
) -> None:
    require_free(tmp_path / "not" / "yet", 1, "a tiny step")


def test_too_little_free_disk_says_how_much_is_needed_and_what_to_do(tmp_path: Path) -> None:
    needs = r"importing x needs 1000000\.0 GB free .* down --purge"
    with pytest.raises(NotEnoughDisk, match=needs):
        require_free(tmp_path, 10**15, "importing x")
