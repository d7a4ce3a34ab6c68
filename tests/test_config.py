"""CascadeConfig / MaxGramConfig: defaults, the default k-matrix, (de)serialisation and k-matrix resolution."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

import hf_cascade
from hf_cascade import CascadeConfig, CascadeValueError, MaxGramConfig, default_k_matrix
from hf_cascade.config import CONFIG_NAME

# ---------------------------------------------------------------------------------------------------- defaults


def test_max_gram_config_defaults():
    mg = MaxGramConfig()
    assert (mg.max_ngram_size, mg.min_ngram_size, mg.num_pred_tokens, mg.bigram_table) == (8, 1, 16, None)


def test_cascade_config_defaults():
    config = CascadeConfig()
    assert config.k_matrix is None
    assert config.lenience == 1.0 and isinstance(config.lenience, float)
    assert config.use_max_gram is True
    assert config.max_gram == MaxGramConfig()


def test_default_instances_do_not_share_max_gram():
    a, b = CascadeConfig(), CascadeConfig()
    assert a.max_gram is not b.max_gram


def test_int_lenience_is_stored_as_float():
    config = CascadeConfig(lenience=3)
    assert config.lenience == 3.0 and isinstance(config.lenience, float)


def test_k_matrix_tuples_are_normalised_to_lists():
    config = CascadeConfig(k_matrix=((4, 2), (0, 6)))
    assert config.k_matrix == [[4, 2], [0, 6]]
    assert all(type(row) is list for row in config.k_matrix)


def test_bigram_table_pathlike_is_stored_as_str(tmp_path):
    mg = MaxGramConfig(bigram_table=tmp_path / "table.safetensors")
    assert mg.bigram_table == os.fspath(tmp_path / "table.safetensors")
    assert isinstance(mg.bigram_table, str)


# ---------------------------------------------------------------------------------------------------- default_k_matrix


@pytest.mark.parametrize(
    "num_assistants, use_max_gram, expected",
    [
        (0, True, [[16]]),
        (1, True, [[4, 2], [0, 16]]),
        (2, True, [[4, 0, 2], [0, 4, 2], [0, 0, 16]]),
        (3, True, [[4, 0, 0, 2], [0, 4, 0, 2], [0, 0, 4, 2], [0, 0, 0, 16]]),
        (1, False, [[4]]),
        (2, False, [[4, 0], [0, 4]]),
        (3, False, [[4, 0, 0], [0, 4, 0], [0, 0, 4]]),
    ],
)
def test_default_k_matrix(num_assistants, use_max_gram, expected):
    assert default_k_matrix(num_assistants, use_max_gram) == expected
    assert hf_cascade.default_k_matrix is default_k_matrix
    # The default is itself a valid k-matrix.
    assert CascadeConfig(k_matrix=expected, use_max_gram=use_max_gram).k_matrix == expected


def test_default_k_matrix_without_any_drafter_raises():
    with pytest.raises(ValueError, match="at least one drafter"):
        default_k_matrix(0, False)


def test_default_k_matrix_returns_fresh_lists():
    a = default_k_matrix(1, True)
    a[0][0] = 99
    assert default_k_matrix(1, True) == [[4, 2], [0, 16]]
    assert default_k_matrix(1, True, max_gram_tokens=5) == [[4, 2], [0, 5]]


# ---------------------------------------------------------------------------------------------------- resolved_k_matrix


def test_resolved_k_matrix_default():
    # Upper bounds the draft-length controller cuts (adaptive_drafters, the default), fixed lengths without it.
    assert CascadeConfig().resolved_k_matrix(2) == [[16, 0, 16], [0, 16, 16], [0, 0, 16]]
    assert CascadeConfig(max_gram={"num_pred_tokens": 6}).resolved_k_matrix(1) == [[16, 6], [0, 6]]
    assert default_k_matrix(1, True, 5, 8, tail_tokens=3) == [[8, 3], [0, 5]]
    assert CascadeConfig(adaptive_drafters=False).resolved_k_matrix(2) == [[4, 0, 2], [0, 4, 2], [0, 0, 16]]
    assert CascadeConfig(max_gram={"num_pred_tokens": 9}).resolved_k_matrix(0) == [[9]]
    assert CascadeConfig(use_max_gram=False, adaptive_drafters=False).resolved_k_matrix(2) == [[4, 0], [0, 4]]


def test_resolved_k_matrix_explicit_fits():
    k = [[3, 1], [0, 5]]
    config = CascadeConfig(k_matrix=k)
    resolved = config.resolved_k_matrix(1)
    assert resolved == k
    resolved[0][0] = 99  # a copy: the config is untouched
    assert config.k_matrix == k


@pytest.mark.parametrize("num_assistants", [0, 2, 3])
def test_resolved_k_matrix_checks_size(num_assistants):
    config = CascadeConfig(k_matrix=[[3, 1], [0, 5]])  # fits 1 assistant + Max-Gram only
    with pytest.raises(ValueError, match=r"k_matrix is 2x2 but the cascade has \d drafter"):
        config.resolved_k_matrix(num_assistants)


def test_resolved_k_matrix_counts_max_gram():
    k = [[3, 1], [0, 5]]
    assert CascadeConfig(k_matrix=k, use_max_gram=False).resolved_k_matrix(2) == k
    with pytest.raises(ValueError, match=r"2 assistant model\(s\) \+ Max-Gram"):
        CascadeConfig(k_matrix=k, use_max_gram=True).resolved_k_matrix(2)


def test_resolved_k_matrix_without_drafter_raises():
    with pytest.raises(ValueError, match="at least one drafter"):
        CascadeConfig(use_max_gram=False).resolved_k_matrix(0)


# ---------------------------------------------------------------------------------------------------- dict round trip


def _custom_config(bigram_table=None) -> CascadeConfig:
    return CascadeConfig(
        k_matrix=[[2, 0, 1], [0, 3, 1], [0, 0, 5]],
        lenience=2.5,
        use_max_gram=True,
        max_gram=MaxGramConfig(max_ngram_size=5, min_ngram_size=2, num_pred_tokens=7, bigram_table=bigram_table),
        confidence_threshold=0.4,
        batch_layout="packed",
        pack_drafters=False,
    )


def test_to_dict_is_plain_json():
    d = _custom_config("table.safetensors").to_dict()
    assert d == {
        "k_matrix": [[2, 0, 1], [0, 3, 1], [0, 0, 5]],
        "lenience": 2.5,
        "use_max_gram": True,
        "max_gram": {
            "max_ngram_size": 5,
            "min_ngram_size": 2,
            "num_pred_tokens": 7,
            "bigram_table": "table.safetensors",
            "occurrence": "latest",
            "adaptive_length": True,
            "token_cost": 0.05,
            "draft_cost": 0.3,
            "measure_cost": True,
        },
        "confidence_threshold": 0.4,
        "adaptive_drafters": True,
        "batch_layout": "packed",
        "pack_drafters": False,
        "hf_cascade_version": hf_cascade.__version__,
    }
    assert json.loads(json.dumps(d)) == d


@pytest.mark.parametrize("config", [CascadeConfig(), _custom_config(), _custom_config("t.safetensors")])
def test_dict_round_trip(config):
    restored = CascadeConfig.from_dict(config.to_dict())
    assert restored == config
    assert isinstance(restored.max_gram, MaxGramConfig)


@pytest.mark.parametrize("layout", ["pad", "PACKED", None, 1])
def test_batch_layout_is_checked(layout):
    with pytest.raises(CascadeValueError, match=r"CascadeConfig\.batch_layout must be one of 'padded', 'packed', got"):
        CascadeConfig(batch_layout=layout)
    assert CascadeConfig().batch_layout == "padded"


def test_from_dict_nested_max_gram_dict():
    config = CascadeConfig.from_dict({"lenience": 2, "max_gram": {"max_ngram_size": 4, "num_pred_tokens": 3}})
    assert isinstance(config.max_gram, MaxGramConfig)
    assert config.max_gram == MaxGramConfig(max_ngram_size=4, min_ngram_size=1, num_pred_tokens=3)
    assert config.lenience == 2.0 and config.k_matrix is None and config.use_max_gram is True


def test_from_dict_partial_uses_defaults():
    assert CascadeConfig.from_dict({}) == CascadeConfig()
    assert CascadeConfig.from_dict({"use_max_gram": False}) == CascadeConfig(use_max_gram=False)


def test_constructor_accepts_max_gram_dict():
    assert CascadeConfig(max_gram={"min_ngram_size": 2}).max_gram == MaxGramConfig(min_ngram_size=2)


def test_to_json_string_round_trip():
    config = _custom_config()
    text = config.to_json_string()
    assert text.endswith("\n")
    assert CascadeConfig.from_dict(json.loads(text)) == config


# ---------------------------------------------------------------------------------------------------- save / load


def test_save_pretrained_round_trip_directory(tmp_path):
    config = _custom_config("bigram.safetensors")
    path = config.save_pretrained(tmp_path)
    assert os.path.basename(path) == CONFIG_NAME == "cascade_config.json"
    assert os.path.isfile(tmp_path / "cascade_config.json")
    assert sorted(os.listdir(tmp_path)) == ["cascade_config.json"]
    assert CascadeConfig.from_pretrained(tmp_path) == config
    assert CascadeConfig.from_pretrained(str(tmp_path)) == config


def test_save_pretrained_round_trip_file_path(tmp_path):
    config = _custom_config()
    path = config.save_pretrained(tmp_path)
    assert CascadeConfig.from_pretrained(path) == config
    assert CascadeConfig.from_pretrained(tmp_path / "cascade_config.json") == config


def test_save_pretrained_creates_missing_directories(tmp_path):
    target = tmp_path / "a" / "b"
    path = CascadeConfig(lenience=4).save_pretrained(target)
    assert path == os.path.join(target, "cascade_config.json")
    assert CascadeConfig.from_pretrained(target) == CascadeConfig(lenience=4)


def test_save_pretrained_overwrites(tmp_path):
    CascadeConfig(lenience=4).save_pretrained(tmp_path)
    CascadeConfig(lenience=2).save_pretrained(tmp_path)
    assert CascadeConfig.from_pretrained(tmp_path).lenience == 2.0


def test_saved_file_is_readable_json(tmp_path):
    CascadeConfig(k_matrix=[[3]]).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "cascade_config.json").read_text(encoding="utf-8"))
    assert data["k_matrix"] == [[3]]
    assert set(data) == {
        "k_matrix",
        "lenience",
        "use_max_gram",
        "max_gram",
        "confidence_threshold",
        "adaptive_drafters",
        "batch_layout",
        "pack_drafters",
        "hf_cascade_version",
    }


def test_save_pretrained_into_a_file_raises(tmp_path):
    file = tmp_path / "not_a_dir"
    file.write_text("x")
    with pytest.raises(ValueError, match="is a file; pass a directory"):
        CascadeConfig().save_pretrained(file)


def test_from_pretrained_validates_the_file(tmp_path):
    (tmp_path / "cascade_config.json").write_text(json.dumps({"k_matrix": [[1, 2], [3, 4]]}))
    with pytest.raises(ValueError, match="upper-triangular"):
        CascadeConfig.from_pretrained(tmp_path)


def test_from_pretrained_directory_without_config_raises(tmp_path):
    with pytest.raises(hf_cascade.CascadeValueError, match=r"holds no cascade_config\.json"):
        CascadeConfig.from_pretrained(tmp_path)


@pytest.fixture
def hub_offline(monkeypatch, tmp_path):
    """Force huggingface_hub offline (whatever was imported first) and run from an empty directory."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # so a relative name cannot resolve to a local path
    return tmp_path


def test_from_pretrained_missing_relative_directory_raises_oserror(hub_offline):
    """A missing *relative* path is looked up on the Hub; offline that fails with an OSError."""
    with pytest.raises(OSError):
        CascadeConfig.from_pretrained("missing_config_dir", cache_dir=str(hub_offline / "cache"))


def test_from_pretrained_missing_absolute_directory_raises(tmp_path):
    with pytest.raises(hf_cascade.CascadeValueError, match="does_not_exist: path does not exist"):
        CascadeConfig.from_pretrained(tmp_path / "does_not_exist")


def test_from_pretrained_unknown_hub_id_offline_raises_fast(hub_offline):
    t0 = time.perf_counter()
    with pytest.raises(Exception):  # noqa: B017  (whatever huggingface_hub raises offline)
        CascadeConfig.from_pretrained("hf-cascade-tests/no-such-repo-7f3a", cache_dir=str(hub_offline / "cache"))
    assert time.perf_counter() - t0 < 10, "offline Hub lookup must fail fast, not wait on the network"


def test_max_gram_none_means_defaults():
    assert CascadeConfig(max_gram=None).max_gram == MaxGramConfig()


# ---------------------------------------------------------------------------------------------------- issue 11
def test_to_dict_records_the_version_and_from_dict_accepts_it():
    d = CascadeConfig(lenience=3).to_dict()
    assert d["hf_cascade_version"] == hf_cascade.__version__
    assert CascadeConfig.from_dict(d) == CascadeConfig(lenience=3)


def test_direct_construction_with_a_wrong_name_raises():
    """In code a wrong name is a typo: the dataclass raises, and so does from_dict (files warn instead)."""
    with pytest.raises(TypeError, match="lenince"):
        CascadeConfig(lenince=2.0)
    with pytest.raises(TypeError, match="max_ngram"):
        MaxGramConfig(max_ngram=3)
    with pytest.raises(ValueError, match=r"Unknown CascadeConfig field\(s\) \['lenince'\]"):
        CascadeConfig.from_dict({"lenince": 2.0})


@pytest.mark.parametrize(
    "version, reason",
    [
        ("99.0", r"the file was written by hf_cascade 99.0, newer than this"),
        (None, "a typo, or a file written by a newer"),
    ],
)
def test_config_file_with_unknown_keys_loads_with_a_warning(version, reason, tmp_path):
    data = CascadeConfig(lenience=2.0, max_gram={"max_ngram_size": 5}).to_dict()
    data["future_field"] = [1, 2]
    data["max_gram"]["future_knob"] = 0.5
    data["hf_cascade_version"] = version
    path = tmp_path / "cascade_config.json"
    path.write_text(json.dumps(data))
    keys = re.escape("['future_field', 'max_gram.future_knob']")
    with pytest.warns(UserWarning, match=f"Ignoring unknown CascadeConfig key\\(s\\) {keys} in {path} \\({reason}"):
        config = CascadeConfig.from_pretrained(tmp_path)
    assert config == CascadeConfig(lenience=2.0, max_gram={"max_ngram_size": 5})
    with pytest.warns(UserWarning, match="future_field"):
        assert CascadeConfig.from_json_file(path) == config


def test_config_file_without_unknown_keys_does_not_warn(tmp_path, recwarn):
    CascadeConfig(lenience=2.0).save_pretrained(tmp_path)
    CascadeConfig.from_pretrained(tmp_path)
    assert not [w for w in recwarn if "CascadeConfig" in str(w.message)]


def test_malformed_json_names_the_file(tmp_path):
    path = tmp_path / "cascade_config.json"
    path.write_text('{"lenience": 2.0,\n "k_matrix": [[3]],}\n')
    message = f"{re.escape(str(path))} is not valid JSON \\(Expecting property name enclosed in double quotes at line 2"
    with pytest.raises(hf_cascade.CascadeValueError, match=message):
        CascadeConfig.from_pretrained(tmp_path)
    with pytest.raises(hf_cascade.CascadeValueError, match=message):
        CascadeConfig.from_json_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(
        hf_cascade.CascadeValueError, match="must hold a JSON object of CascadeConfig fields, got a JSON"
    ):
        CascadeConfig.from_pretrained(path)


@pytest.mark.parametrize(
    "cls, field, value",
    [
        (CascadeConfig, "lenience", 10**400),
        (CascadeConfig, "confidence_threshold", 10**400),
        (MaxGramConfig, "token_cost", -(10**400)),
        (MaxGramConfig, "draft_cost", 10**400),
    ],
    ids=["lenience", "confidence_threshold", "token_cost", "draft_cost"],
)
def test_float_fields_beyond_the_float_range(cls, field, value):
    with pytest.raises(hf_cascade.CascadeValueError, match=f"^{cls.__name__}.{field} must .*got -?10000000000"):
        cls(**{field: value})


def test_max_ngram_size_has_an_upper_bound():
    from hf_cascade.config import MAX_NGRAM_SIZE_LIMIT

    assert MaxGramConfig(max_ngram_size=MAX_NGRAM_SIZE_LIMIT).max_ngram_size == 64
    with pytest.raises(hf_cascade.CascadeValueError, match=r"MaxGramConfig.max_ngram_size must be <= 64 .*got 1024"):
        MaxGramConfig(max_ngram_size=1024)


def test_bigram_table_folder_is_named(tmp_path):
    with pytest.raises(hf_cascade.CascadeValueError, match=r"MaxGramConfig.bigram_table \(.*\) is a folder"):
        MaxGramConfig(bigram_table=tmp_path)
    with pytest.raises(hf_cascade.CascadeValueError, match=r"MaxGramConfig.bigram_table \(.*\) is a folder"):
        CascadeConfig(max_gram={"bigram_table": str(tmp_path)})


@pytest.mark.parametrize(
    "reference", ["./missing", "../missing-hf-cascade", "~/missing-hf-cascade-x", "a/b/c", "configs/x"]
)
def test_from_pretrained_missing_local_path_never_reaches_the_hub(reference, hub_offline, monkeypatch):
    """`configs/x` has the owner/name form, but ./configs is a local folder: a path, not a Hub id."""
    import huggingface_hub

    def forbidden(*args, **kwargs):
        raise AssertionError("a local path was looked up on the Hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", forbidden)
    (hub_offline / "configs").mkdir()
    t0 = time.perf_counter()
    with pytest.raises(hf_cascade.CascadeValueError, match=f"^{re.escape(reference)}: path does not exist"):
        CascadeConfig.from_pretrained(reference)
    assert time.perf_counter() - t0 < 1
