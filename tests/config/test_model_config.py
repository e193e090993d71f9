"""lib.config.model_config: a valid config parses into typed specs; every malformed config is a ConfigError that
names the file and the field (configs are written into tmp_path and read back through the registry)."""

from __future__ import annotations

import copy

import pytest
import yaml

from lib.common.errors import ConfigError
from lib.config.model_config import BATCH_DIM, Shape, parse_model_config
from lib.config.models import discover

from conftest import FIXTURES, MODELS


# --- a valid config ------------------------------------------------------------------------------------
def test_tiny_config_parses(tiny):
    assert tiny.name == "tiny_cnn" and tiny.path == FIXTURES / "tiny_cnn" / "config.yaml"
    assert tiny.folder == FIXTURES / "tiny_cnn"
    (spec,) = tiny.inputs
    assert spec.name == "image" and spec.dtype == "float32"
    assert spec.dims == ("batch", "channels", "height", "width")
    assert spec.example == (2, 3, 32, 32) and spec.runtime == (-1, 3, -1, -1)
    assert (spec.min, spec.opt, spec.max) == ((1, 3, 16, 16), (4, 3, 32, 32), (16, 3, 64, 64))
    assert spec.data == {"kind": "normal"}
    assert spec.dynamic_dims() == ["batch", "height", "width"]
    assert [o.name for o in tiny.outputs] == ["logits"] and tiny.outputs[0].dims == ("batch", "classes")
    assert tiny.top_k_output == "logits"
    assert tiny.batch_sizes == (1, 4) and tiny.cpu_batch_sizes == (1, 4)  # CPU sizes default to the GPU ones
    assert [s.label for s in tiny.shapes] == ["32x32"]
    assert tiny.shape_dims == ("height", "width")


def test_profile_range(tiny):
    assert tiny.profile_range(BATCH_DIM) == (1, 16)
    assert tiny.profile_range("height") == (16, 64)
    assert tiny.profile_range("width") == (16, 64)
    assert tiny.profile_range("channels") == (3, 3)


def test_concrete_shape(tiny):
    shape = tiny.parse_shape("48x20")
    assert shape.as_dict() == {"height": 48, "width": 20} and shape.label == "48x20"
    assert tiny.inputs[0].concrete_shape(7, shape) == (7, 3, 48, 20)


def test_parse_shape_valid_and_bounds(tiny):
    assert tiny.parse_shape(" 16x64 ") == Shape((("height", 16), ("width", 64)))
    assert tiny.parse_shape("64x16").label == "64x16"


@pytest.mark.parametrize("text, words", [
    ("8x32", ["'8x32'", "height=8", "16 to 64", "tiny_cnn"]),
    ("32x65", ["'32x65'", "width=65", "16 to 64"]),
    ("-32x32", ["'-32x32'", "height=-32"]),
])
def test_parse_shape_outside_profile_names_value_profile_and_file(tiny, text, words):
    with pytest.raises(ConfigError) as e:
        tiny.parse_shape(text)
    msg = str(e.value)
    for w in words:
        assert w in msg
    assert str(tiny.path) in msg and "profile" in msg


@pytest.mark.parametrize("text", ["32", "32x32x32", "axb", "32x", "", "static", "32.5x32", "²x²"])
def test_parse_shape_of_wrong_form_names_the_form(tiny, text):
    with pytest.raises(ConfigError) as e:
        tiny.parse_shape(text)
    assert repr(text) in str(e.value) and "<height>x<width>" in str(e.value)


def test_static_model_shapes():
    cfgs = discover(MODELS)
    effnet = cfgs["efficientnet_b1"]
    assert effnet.shape_dims == () and [s.label for s in effnet.shapes] == ["static"]
    assert effnet.parse_shape("static") == Shape(()) and effnet.parse_shape("") == Shape(())
    with pytest.raises(ConfigError, match=r"'240x240'.*no dynamic dims besides batch.*'static'"):
        effnet.parse_shape("240x240")
    assert effnet.inputs[0].concrete_shape(5, Shape(())) == (5, 3, 240, 240)
    assert effnet.cpu_batch_sizes == (1, 4, 16) and effnet.batch_sizes == (1, 8, 32, 128)
    resnet = cfgs["resnet50"]
    assert resnet.shape_dims == ("height", "width") and resnet.profile_range("height") == (160, 320)


def test_cpu_defaults(tmp_path, tiny_raw):
    raw = copy.deepcopy(tiny_raw)
    raw["defaults"].update(cpu_batch_sizes=[2], cpu_shapes=["16x16", "24x24"])
    cfg = parse_model_config(raw, tmp_path / "config.yaml")
    assert cfg.default_batch_sizes("cpu") == (2,) and cfg.default_batch_sizes("cuda") == (1, 4)
    assert [s.label for s in cfg.default_shapes("cpu")] == ["16x16", "24x24"]
    assert [s.label for s in cfg.default_shapes("cuda")] == ["32x32"]


def test_check_batch(tiny):
    for b in (1, 16):
        tiny.check_batch(b)
    for b in (0, 17):
        with pytest.raises(ConfigError) as e:
            tiny.check_batch(b)
        msg = str(e.value)
        assert f"BATCH_SIZES: {b} " in msg and "batch from 1 to 16" in msg and str(tiny.path) in msg


def test_two_inputs_share_a_dim_and_the_profile_intersects(tmp_path):
    raw = {
        "name": "two_in", "task": "text-encoder",
        "inputs": [
            {"name": "ids", "dtype": "int64", "dims": ["batch", "seq"], "example": [2, 16], "runtime": [-1, -1],
             "profile": {"min": [1, 8], "opt": [4, 64], "max": [8, 128]}, "data": {"kind": "randint", "low": 0, "high": 100}},
            {"name": "mask", "dtype": "int64", "dims": ["batch", "seq"], "example": [2, 16], "runtime": [-1, -1],
             "profile": {"min": [1, 4], "opt": [4, 64], "max": [16, 96]}, "data": {"kind": "ones"}},
        ],
        "outputs": [{"name": "hidden", "dims": ["batch", "seq", "hidden"]}],
        "defaults": {"batch_sizes": [1, 8], "shapes": [64]},
    }
    cfg = parse_model_config(raw, tmp_path / "config.yaml")
    assert cfg.shape_dims == ("seq",)
    assert cfg.profile_range("seq") == (8, 96) and cfg.profile_range("batch") == (1, 8)
    assert [s.label for s in cfg.shapes] == ["64"] and cfg.top_k_output is None
    with pytest.raises(ConfigError, match="seq=100 is outside"):
        cfg.parse_shape("100")
    with pytest.raises(ConfigError, match="BATCH_SIZES: 9 "):
        cfg.check_batch(9)


def test_inputs_sharing_a_dim_need_overlapping_profiles(tmp_path):
    def inp(name, lo, hi):
        return {"name": name, "dtype": "int64", "dims": ["batch", "seq"], "example": [2, lo], "runtime": [-1, -1],
                "profile": {"min": [1, lo], "opt": [2, lo], "max": [8, hi]}, "data": {"kind": "ones"}}

    raw = {"name": "m", "inputs": [inp("ids", 8, 64), inp("mask", 128, 256)],
           "outputs": [{"name": "y", "dims": ["batch"]}], "defaults": {"shapes": [8]}}
    path = tmp_path / "config.yaml"
    with pytest.raises(ConfigError) as e:
        parse_model_config(raw, path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: inputs: ") and "'seq'" in msg
    assert "inputs[0] 8..64" in msg and "inputs[1] 128..256" in msg


def test_defaults_when_absent(tmp_path):
    raw = {"name": "s", "inputs": [{"name": "x", "dims": ["batch", "c"], "example": [2, 5], "runtime": [-1, 5],
                                     "profile": {"min": [1, 5], "opt": [2, 5], "max": [4, 5]}},
                                    {"name": "y", "dims": ["batch"], "example": [2], "runtime": [-1],
                                     "profile": {"min": [1], "opt": [1], "max": [4]}}],
           "outputs": [{"name": "o", "dims": ["batch"]}]}
    cfg = parse_model_config(raw, tmp_path / "config.yaml")
    assert cfg.inputs[0].dtype == "float32"  # the default
    assert [s.label for s in cfg.shapes] == ["static"] and cfg.batch_sizes == (1,)


# --- malformed configs: ConfigError naming the file and the field ---------------------------------------
def _set(path: str, value):
    """A change to the tiny config: ``inputs.0.profile.max`` = value (value DELETE removes the key)."""
    def change(raw):
        *parents, last = path.split(".")
        node = raw
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        key = int(last) if isinstance(node, list) else last
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
    return change


DELETE = object()

BAD = [
    # (id, change, field named in the message, a word of the reason)
    ("top-level-not-mapping", lambda raw: ["not", "a", "mapping"], None, "top level"),
    ("no-name", _set("name", DELETE), "name", "None"),
    ("bad-name", _set("name", "tiny cnn"), "name", "'tiny cnn'"),
    ("no-inputs", _set("inputs", DELETE), "inputs", "non-empty list"),
    ("empty-inputs", _set("inputs", []), "inputs", "non-empty list"),
    ("input-not-mapping", _set("inputs.0", "image"), "inputs[0]", "'image'"),
    ("input-no-name", _set("inputs.0.name", DELETE), "inputs[0].name", "missing"),
    ("input-no-runtime", _set("inputs.0.runtime", DELETE), "inputs[0].runtime", "missing"),
    ("bad-dtype", _set("inputs.0.dtype", "float64"), "inputs[0].dtype", "'float64'"),
    ("dims-not-names", _set("inputs.0.dims", "batch,channels"), "inputs[0].dims", "list of dim names"),
    ("dims-repeat", _set("inputs.0.dims", ["batch", "c", "h", "h"]), "inputs[0].dims", "repeat"),
    ("no-batch-dim", _set("inputs.0.dims", ["n", "channels", "height", "width"]), "inputs[0].dims", "'batch'"),
    ("example-wrong-length", _set("inputs.0.example", [2, 3, 32]), "inputs[0].example", "expected 4 values"),
    ("example-not-ints", _set("inputs.0.example", [2, 3, 32.5, 32]), "inputs[0].example", "list of integers"),
    ("runtime-zero", _set("inputs.0.runtime.2", 0), "inputs[0].runtime[2]", "0 is not valid"),
    ("runtime-minus-two", _set("inputs.0.runtime.3", -2), "inputs[0].runtime[3]", "-2 is not valid"),
    ("batch-not-first", lambda raw: raw["inputs"][0].update(dims=["channels", "batch", "height", "width"],
                                                            runtime=[3, -1, -1, -1]),
     "inputs[0].dims", "must be the first dim"),
    ("batch-static", _set("inputs.0.runtime.0", 2), "inputs[0].runtime[0]", "dynamic"),
    # issue 14: a batch dim in the wrong place is a matter of dims, even when runtime marks it dynamic
    ("batch-misplaced", lambda raw: raw["inputs"][0].update(dims=["channels", "height", "batch", "width"],
                                                            runtime=[3, -1, -1, -1]), "inputs[0].dims", "dim 2"),
    ("top-k-short-key", lambda raw: raw.update(top_k=raw.pop("top_k_output")), "top_k",
     "did you mean 'top_k_output'"),
    ("top-k-typo-value", _set("top_k_output", "logit"), "top_k_output", "did you mean 'logits'"),
    ("bad-task", _set("task", "image-clasification"), "task", "did you mean 'image-classification'"),
    ("profile-not-mapping", _set("inputs.0.profile", [1, 2]), "inputs[0].profile", "mapping"),
    ("profile-no-max", _set("inputs.0.profile.max", DELETE), "inputs[0].profile.max", "missing"),
    ("profile-min-gt-max", _set("inputs.0.profile.min", [1, 3, 80, 16]), "inputs[0].profile", "min <= opt <= max"),
    ("profile-opt-gt-max", _set("inputs.0.profile.opt", [32, 3, 32, 32]), "inputs[0].profile", "min <= opt <= max"),
    ("profile-min-zero", _set("inputs.0.profile.min", [0, 3, 16, 16]), "inputs[0].profile", "1 <= min"),
    ("static-dim-profile-differs", _set("inputs.0.profile.max", [16, 4, 64, 64]), "inputs[0].profile", "static"),
    ("example-outside-profile", _set("inputs.0.example", [2, 3, 128, 32]), "inputs[0].example[2]", "outside"),
    ("bad-data-kind", _set("inputs.0.data", {"kind": "gaussian"}), "inputs[0].data.kind", "gaussian"),
    ("randint-no-bounds", _set("inputs.0.data", {"kind": "randint", "low": 0}), "inputs[0].data", "low and high"),
    ("no-outputs", _set("outputs", DELETE), "outputs", "non-empty list"),
    ("output-no-name", _set("outputs.0", {"dims": ["batch"]}), "outputs[0].name", "name"),
    ("top-k-unknown", _set("top_k_output", "probs"), "top_k_output", "'probs'"),
    ("defaults-not-mapping", _set("defaults", [1, 4]), "defaults", "mapping"),
    ("batch-sizes-zero", _set("defaults.batch_sizes", [0, 4]), "defaults.batch_sizes", "positive"),
    ("batch-sizes-empty", _set("defaults.batch_sizes", []), "defaults.batch_sizes", "positive"),
    ("batch-size-outside-profile", _set("defaults.batch_sizes", [1, 32]), "defaults.batch_sizes", "32"),
    ("cpu-batch-size-outside-profile", _set("defaults.cpu_batch_sizes", [64]), "defaults.cpu_batch_sizes", "64"),
    ("shapes-missing", _set("defaults.shapes", DELETE), "defaults.shapes", "<height>x<width>"),
    ("shapes-not-list", _set("defaults.shapes", 32), "defaults.shapes", "list of shapes"),
    ("shape-wrong-form-example-fits", _set("defaults.shapes", "32"), "defaults.shapes", "e.g. 32x32"),
    ("shape-outside-profile", _set("defaults.shapes", ["32x32", "8x8"]), "defaults.shapes", "height=8"),
    ("shape-wrong-form", _set("defaults.shapes", ["32"]), "defaults.shapes", "<height>x<width>"),
    ("typo-top-level-key", lambda raw: raw.update(ouputs=raw.pop("outputs")), "ouputs", "did you mean 'outputs'"),
    ("typo-input-key", lambda raw: raw["inputs"][0].update(dtyp="float32"), "inputs[0].dtyp", "did you mean 'dtype'"),
    ("typo-defaults-key", _set("defaults.batch_size", [1]), "defaults.batch_size", "did you mean 'batch_sizes'"),
    ("cpu-shapes-outside-profile", _set("defaults.cpu_shapes", ["8x8"]), "defaults.cpu_shapes", "height=8"),
    ("repeated-input-names", lambda raw: raw["inputs"].append(copy.deepcopy(raw["inputs"][0])), "inputs", "repeat"),
]


@pytest.mark.parametrize("change, field, reason", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_config_names_file_and_field(make_model, tiny_raw, change, field, reason):
    raw = copy.deepcopy(tiny_raw)
    raw["name"] = "bad"
    new = change(raw)
    path = make_model("bad", config=new if new is not None else raw)
    with pytest.raises(ConfigError) as e:
        discover(make_model.root)
    msg = str(e.value)
    assert msg.startswith(f"{path}: "), msg
    if field is not None:
        assert msg.startswith(f"{path}: {field}: "), msg
    assert reason in msg, msg


@pytest.mark.parametrize("text, labels", [("32x32", ["32x32"]), ("32x32, 48x48", ["32x32", "48x48"])])
def test_shapes_may_be_written_as_one_string(tmp_path, tiny_raw, text, labels):
    """Issue 14: `shapes: 32x32` (or `shapes: static`), as the docs write it, not only `[32x32]`."""
    raw = copy.deepcopy(tiny_raw)
    raw["defaults"]["shapes"] = text
    assert [s.label for s in parse_model_config(raw, tmp_path / "config.yaml").shapes] == labels


def test_static_shapes_as_one_string(tmp_path, tiny_raw):
    raw = copy.deepcopy(tiny_raw)
    spec = raw["inputs"][0]
    spec.update(runtime=[-1, 3, 32, 32], example=[2, 3, 32, 32],
                profile={"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [16, 3, 32, 32]})
    raw["defaults"]["shapes"] = "static"
    raw["defaults"].pop("cpu_shapes", None)
    assert [s.label for s in parse_model_config(raw, tmp_path / "config.yaml").shapes] == ["static"]


def test_invalid_yaml_names_the_file(make_model):
    path = make_model("broken", config="name: broken\ninputs: [\n  - {name: x\n")
    with pytest.raises(ConfigError) as e:
        discover(make_model.root)
    assert str(path) in str(e.value) and "not valid YAML" in str(e.value)


def test_the_shipped_configs_round_trip_through_yaml(tiny_raw, tmp_path):
    """parse_model_config is a pure function of the mapping: parsing a dumped copy gives the same config."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_raw))
    a = parse_model_config(yaml.safe_load(path.read_text()), path)
    b = parse_model_config(copy.deepcopy(tiny_raw), path)
    assert a == b


def test_split_shape_is_the_one_reader_of_shape_labels():
    from lib.config.model_config import split_shape
    from lib.report.plots import shape_key

    assert split_shape("240x240") == (240, 240) and split_shape(" 128 ") == (128,) and split_shape("3X8") == (3, 8)
    assert split_shape("static") is None and split_shape("2x") is None and split_shape("-32x32") is None
    assert split_shape("-32x32", signed=True) == (-32, 32)
    assert sorted(["512", "static", "128"], key=shape_key) == ["static", "128", "512"]
