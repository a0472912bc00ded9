"""``load_spec``: the three SPEC forms load, and every misuse is a SpecError that names the fix."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from autopar.errors import AutoparError, SpecError
from autopar.spec import LoadedModel, load_spec

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
CONFIGS = ROOT / "examples" / "configs"
FACTORIES = TESTS / "spec_factories.py"


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``spec_factories`` importable as a module, whatever pytest's import mode."""
    monkeypatch.syspath_prepend(str(TESTS))


def spec_error(spec: str, *fragments: str, **kwargs: int) -> str:
    """Load ``spec`` expecting a SpecError naming the spec and every fragment; return it."""
    with pytest.raises(SpecError) as info:
        load_spec(spec, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert spec in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert isinstance(info.value, AutoparError)
    return message


def write_json(tmp_path: Path, data: object, name: str = "config.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


# --- factories ---------------------------------------------------------------------------


def test_file_spec_pair() -> None:
    loaded = load_spec(f"{FACTORIES}:pair")
    assert isinstance(loaded, LoadedModel)
    assert isinstance(loaded.model, nn.Linear)
    assert len(loaded.example_inputs) == 1 and loaded.example_inputs[0].shape == (2, 16)
    assert loaded.example_kwargs == {}
    assert loaded.name == "pair"


def test_file_spec_triple_with_list_inputs() -> None:
    loaded = load_spec(f"{FACTORIES}:triple")
    assert isinstance(loaded.example_inputs, tuple)
    assert loaded.example_inputs[0].shape == (2, 16)
    assert loaded.example_kwargs == {}


def test_examples_factories_load() -> None:
    mlp = load_spec(f"{ROOT}/examples/models.py:mlp", batch_size=4)
    assert mlp.example_inputs[0].shape == (4, 64)
    gpt = load_spec(f"{ROOT}/examples/models.py:tiny_gpt", batch_size=2, seq_len=16)
    assert gpt.example_inputs[0].shape == (2, 16)
    assert set(gpt.example_kwargs) == {"targets"}
    assert next(gpt.model.parameters()).device.type == "meta"


def test_module_spec(on_path: None) -> None:
    loaded = load_spec("spec_factories:pair")
    assert isinstance(loaded.model, nn.Linear)


def test_batch_and_seq_len_reach_factories_that_take_them(on_path: None) -> None:
    assert load_spec("spec_factories:sized").example_inputs[0].shape == (3, 5, 16)
    loaded = load_spec("spec_factories:sized", batch_size=7, seq_len=11)
    assert loaded.example_inputs[0].shape == (7, 11, 16)


def test_batch_for_factory_without_the_parameter(on_path: None) -> None:
    spec_error("spec_factories:pair", "'pair'", "batch_size", "--batch", batch_size=4)
    spec_error("spec_factories:pair", "seq_len", "--seq-len", seq_len=4)


def test_bad_sizes() -> None:
    spec_error(f"{CONFIGS}/gpt2.json", "batch size", "at least 1", batch_size=0)
    spec_error(f"{CONFIGS}/gpt2.json", "sequence length", "at least 1", seq_len=-3)


def test_file_not_found(tmp_path: Path) -> None:
    spec_error(f"{tmp_path}/nope.py:make", "not found", "nope.py")


def test_config_not_found(tmp_path: Path) -> None:
    spec_error(f"{tmp_path}/nope.json", "not found")


def test_no_separator() -> None:
    spec_error("mypackage.models", "no ':' separator", "file.py:FUNCTION")


def test_file_without_factory() -> None:
    spec_error(str(FACTORIES), "no factory", f"{FACTORIES}:FUNCTION")


def test_directory_path_without_py() -> None:
    spec_error("some/dir/models:make", "neither a .py file nor a module path")


def test_module_not_importable() -> None:
    spec_error("no_such_module_autopar_test:make", "module 'no_such_module_autopar_test' "
               "not found", "PYTHONPATH")


def test_module_whose_dependency_is_missing(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "needs_dep_autopar_test.py").write_text("import not_installed_dep_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec_error("needs_dep_autopar_test:make", "ModuleNotFoundError",
               "not_installed_dep_xyz", "install")


def test_file_that_fails_to_import(tmp_path: Path) -> None:
    bad = tmp_path / "broken.py"
    bad.write_text("def make(:\n")
    message = spec_error(f"{bad}:make", "SyntaxError", "importing")
    assert "\n" not in message


def test_file_imports_its_neighbours(tmp_path: Path) -> None:
    (tmp_path / "helper_autopar_test.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def build():\n    return nn.Linear(4, 4), torch.zeros(1, 4)\n")
    (tmp_path / "entry.py").write_text("from helper_autopar_test import build\n"
                                       "def make():\n    return build()\n")
    loaded = load_spec(f"{tmp_path}/entry.py:make")
    assert isinstance(loaded.model, nn.Linear)
    assert str(tmp_path) not in sys.path


def test_factory_missing_lists_callables() -> None:
    message = spec_error(f"{FACTORIES}:nope", "'nope' not found", "pair", "triple", "raises")
    assert "_linear" not in message  # private helpers are not offered
    assert "nn" not in message.split("callables defined there:")[1].split(", ")


def test_factory_not_callable() -> None:
    spec_error(f"{FACTORIES}:NOT_CALLABLE", "not callable")


def test_factory_raises() -> None:
    message = spec_error(f"{FACTORIES}:raises", "RuntimeError", "checkpoint not found")
    assert "second line" not in message


@pytest.mark.parametrize(("factory", "fragment"), [
    ("model_only", "only the model"),
    ("one_tuple", "a tuple of 1"),
    ("not_a_module", "torch.nn.Module"),
    ("bad_inputs", "example_inputs of type str"),
    ("bad_kwargs", "example_kwargs of type list"),
])
def test_factory_returns_wrong_thing(factory: str, fragment: str) -> None:
    spec_error(f"{FACTORIES}:{factory}", fragment, f"'{factory}'")


# --- Hugging Face config.json ------------------------------------------------------------


def test_gpt2_config() -> None:
    loaded = load_spec(f"{CONFIGS}/gpt2.json", seq_len=32, batch_size=2)
    assert type(loaded.model).__name__ == "GPT2LMHeadModel"
    (ids,) = loaded.example_inputs
    assert ids.shape == (2, 32) and ids.dtype == torch.long and ids.device.type == "meta"
    assert loaded.example_kwargs["labels"] is ids
    assert loaded.model.config.use_cache is False
    assert next(loaded.model.parameters()).device.type == "meta"
    assert loaded.name == "gpt2"


def test_gpt2_default_seq_len_is_its_positions() -> None:
    assert load_spec(f"{CONFIGS}/gpt2.json").example_inputs[0].shape == (1, 1024)


def test_llama_config() -> None:
    loaded = load_spec(f"{CONFIGS}/llama-3-8b.json")
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert loaded.example_inputs[0].shape == (1, 2048)  # min(8192, 2048)
    assert "labels" in loaded.example_kwargs
    assert sum(p.numel() for p in loaded.model.parameters()) == 8_030_261_248
    assert next(loaded.model.parameters()).dtype == torch.bfloat16  # the config's torch_dtype


def test_bert_config() -> None:
    loaded = load_spec(f"{CONFIGS}/bert-base.json")
    assert type(loaded.model).__name__ == "BertForMaskedLM"
    assert loaded.example_inputs[0].shape == (1, 512)
    assert "labels" in loaded.example_kwargs


def test_config_without_architectures_is_a_causal_lm(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"model_type": "gpt2", "n_layer": 2, "n_embd": 64,
                                 "n_head": 2, "n_positions": 128, "vocab_size": 100})
    loaded = load_spec(path)
    assert type(loaded.model).__name__ == "GPT2LMHeadModel"
    assert loaded.example_inputs[0].shape == (1, 128)


def test_unknown_architecture_falls_back(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"model_type": "gpt2", "architectures": ["MyOwnGPT"],
                                 "n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 50})
    assert type(load_spec(path, seq_len=8).model).__name__ == "GPT2LMHeadModel"


def test_model_without_lm_head_gets_no_labels(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"model_type": "bert", "architectures": ["BertModel"],
                                 "num_hidden_layers": 1, "hidden_size": 32,
                                 "num_attention_heads": 2, "intermediate_size": 64})
    loaded = load_spec(path, seq_len=8)
    assert type(loaded.model).__name__ == "BertModel"
    assert loaded.example_kwargs == {}


def test_seq_len_beyond_positions() -> None:
    spec_error(f"{CONFIGS}/gpt2.json", "exceeds", "1024", seq_len=4096)


def test_json_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    spec_error(str(path), "cannot read it as JSON", "JSONDecodeError")


@pytest.mark.parametrize("data", [{"hidden_size": 8}, [1, 2], {"model_type": 3}])
def test_json_not_a_hf_config(tmp_path: Path, data: object) -> None:
    spec_error(write_json(tmp_path, data), "not a Hugging Face config.json", "model_type")


def test_unknown_model_type(tmp_path: Path) -> None:
    path = write_json(tmp_path, {"model_type": "no_such_arch_xyz"})
    spec_error(path, "does not know model_type 'no_such_arch_xyz'", "upgrade transformers")


def test_transformers_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    spec_error(f"{CONFIGS}/gpt2.json", "pip install 'autopar[hf]'")
