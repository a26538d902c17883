"""Bad input gets one clear error naming the problem."""

from __future__ import annotations

import pytest
import torch

import hopscope
from hopscope.engine import Site, add, cache, first_token_id, replace, run, run_last_position


def test_layer_out_of_range(tiny_llama):
    with pytest.raises(ValueError, match="layer 7 is out of range"):
        run(tiny_llama, ["hi there"], [[cache(Site(7, "resid_post"))]])


def test_head_out_of_range(tiny_llama):
    with pytest.raises(ValueError, match="head 9 is out of range"):
        run(tiny_llama, ["hi there"], [[cache(Site(0, "head_out", head=9))]])


def test_position_beyond_prompt(tiny_llama):
    with pytest.raises(ValueError, match="beyond the prompt"):
        run(tiny_llama, ["hi there"], [[cache(Site(0, "resid_post", position=40))]])


def test_unknown_component(tiny_llama):
    with pytest.raises(ValueError, match="unknown component 'resid_middle'"):
        run(tiny_llama, ["hi there"], [[cache(Site(0, "resid_middle"))]])


def test_component_family_lacks():
    from hopscope.models import tiny

    neox = tiny("gpt_neox")
    with pytest.raises(ValueError, match="parallel residual"):
        run(neox, ["hi there"], [[cache(Site(0, "resid_mid"))]])


def test_fast_path_rejects_non_last_position(tiny_llama):
    with pytest.raises(ValueError, match="does not recompute"):
        run_last_position(tiny_llama, "The capital of France is", [[add(Site(0, "resid_post", 0), torch.ones(64))]])


def test_one_list_per_row(tiny_llama):
    with pytest.raises(ValueError, match="one list per row"):
        run(tiny_llama, ["a b", "c d"], [[]])


def test_target_that_tokenizes_to_nothing(tiny_llama):
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        first_token_id(tiny_llama.tokenizer, "   ")


def test_unknown_model_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hopscope.models.ModelLoadError, match="unknown model 'no-such-org/no-such-model'"):
        hopscope.load_model("no-such-org/no-such-model")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(hopscope.models.ModelLoadError, match="does not exist"):
        hopscope.load_model(str(tmp_path / "missing.gguf"))


def test_gguf_of_unsupported_architecture(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "weird.gguf"
    writer = gguf.GGUFWriter(str(path), "weirdarch")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", __import__("numpy").zeros((4, 4), dtype="float32"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(hopscope.models.ModelLoadError, match="weirdarch|architecture"):
        hopscope.load_model(str(path))


def test_folder_without_config(tmp_path):
    with pytest.raises(hopscope.models.ModelLoadError, match="no config.json"):
        hopscope.load_model(str(tmp_path))


def test_unknown_tiny_family():
    from hopscope.models import tiny

    with pytest.raises(ValueError, match="no tiny model for family 'bert'"):
        tiny("bert")
