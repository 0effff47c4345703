"""The sampler on a GPU (spec.candidate.device): the sandbox shows the generator the one GPU it is given and
the driver's control files, nothing else of the machine's devices; the generator is told where to sample;
``auto`` falls back to the CPU without a usable GPU, and a GPU asked for by name that is not there is refused
before anything runs.

No GPU is needed: the device files are stand-ins (links to /dev/null, which is a character device like the
NVIDIA driver's), so what is tested is gate's binding and contract, not CUDA."""

import dataclasses
import json
import os
import resource
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_policy
from gate.cli import app
from gate.errors import ConfigError
from gate.generator import ImageGenerator, declares_device, log_generator
from gate.sandbox import (BUBBLEWRAP, SamplerDevice, SamplingPlan, SandboxLimits, probe_isolation,
                          resolve_sampler_device, sample_in_sandbox)


def _fake_dev(root: Path, names=("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm")) -> Path:
    root.mkdir()
    for name in names:
        (root / name).symlink_to("/dev/null")
    return root


def test_auto_samples_on_the_cpu_without_a_gpu_and_a_named_gpu_that_is_missing_is_refused(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert resolve_sampler_device("auto", empty, cuda_usable=lambda: True) == SamplerDevice("cpu", ())
    with pytest.raises(ConfigError, match=r"spec.candidate.device: cuda:1 asked for, but this machine has no usable "
                                          r".*nvidia1"):
        resolve_sampler_device("cuda:1", _fake_dev(tmp_path / "dev", ("nvidia0", "nvidiactl", "nvidia-uvm")),
                               cuda_usable=lambda: True)
    with pytest.raises(ConfigError, match="spec.candidate.device"):
        resolve_sampler_device("gpu; rm -rf /")


def test_auto_takes_gpu_0_only_when_torch_can_drive_it_and_cuda_can_run(tmp_path):
    dev = _fake_dev(tmp_path / "dev")
    assert resolve_sampler_device("auto", dev, cuda_usable=lambda: True) == \
        SamplerDevice("cuda", (str(dev / "nvidia0"), str(dev / "nvidiactl"), str(dev / "nvidia-uvm")))
    assert resolve_sampler_device("auto", dev, cuda_usable=lambda: False) == SamplerDevice()
    assert resolve_sampler_device("cuda:1", dev, cuda_usable=lambda: True).files[0] == str(dev / "nvidia1")
    with pytest.raises(ConfigError, match="a torch that sees CUDA"):
        resolve_sampler_device("cuda", dev, cuda_usable=lambda: False)
    assert resolve_sampler_device("cpu", dev) == SamplerDevice()
    no_uvm = _fake_dev(tmp_path / "no-uvm", ("nvidia0", "nvidiactl"))  # CUDA cannot run without nvidia-uvm
    assert resolve_sampler_device("auto", no_uvm, cuda_usable=lambda: True) == SamplerDevice()
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm"):
        (plain / name).write_text("not a device")  # regular files are no GPU
    assert resolve_sampler_device("auto", plain, cuda_usable=lambda: True) == SamplerDevice()


class DeviceReporter(ImageGenerator):
    """Reports, in its one output image, where it was told to sample and what devices and limits it had."""

    def generate(self, n, seed):
        seen = {"device": self.device, "dev": sorted(f for f in os.listdir("/dev") if f.startswith("nvidia")),
                "sys": os.path.isdir("/sys/bus"), "as": resource.getrlimit(resource.RLIMIT_AS)[0],
                "data": resource.getrlimit(resource.RLIMIT_DATA)[0]}
        data = json.dumps(seen).encode()
        img = np.zeros(64 * 64, np.float32)
        img[:len(data)] = np.frombuffer(data, np.uint8)
        return img.reshape(1, 64, 64)  # out of [0, 1]: read raw, before the contract check


@pytest.mark.skipif(probe_isolation() != BUBBLEWRAP, reason="needs bubblewrap; .ci/run installs it")
def test_the_sandbox_shows_the_generator_its_gpu_and_no_other(tmp_path):
    from gate.registry import download_model, resolve_model

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mv, _ = log_generator(DeviceReporter(), "reporter", tracking_uri=uri)
    model = download_model(resolve_model(f"models:/reporter/{mv.version}", uri), uri, tmp_path / "dl")
    gpu1 = resolve_sampler_device("cuda:1", _fake_dev(tmp_path / "dev"), cuda_usable=lambda: True)
    limits = SandboxLimits(timeout_s=120, max_memory_mb=3072)

    def seen(device: SamplerDevice) -> dict:
        raw = sample_in_sandbox(model, SamplingPlan("unconditional", 1, 0, 1), limits, BUBBLEWRAP, device=device)
        return json.loads(bytes(raw[0].astype(np.uint8).ravel()).rstrip(b"\0").decode())

    on_gpu = seen(gpu1)
    assert on_gpu["device"] == "cuda"  # told through the params log_generator declared
    assert on_gpu["dev"] == ["nvidia-uvm", "nvidia1", "nvidiactl"]  # GPU 0 stays out of view
    assert on_gpu["sys"]
    # CUDA reserves address space it never uses: the memory limit moves to the data segment
    assert on_gpu["data"] == 3072 * 2**20 and on_gpu["as"] in (resource.RLIM_INFINITY,
                                                                 resource.getrlimit(resource.RLIMIT_AS)[1])
    # a version logged before the device parameter is shown the GPU but not told (MLflow would drop the param)
    assert declares_device(model) and not declares_device(tmp_path)
    untold = seen(dataclasses.replace(gpu1, told=False))
    assert untold["device"] == "cpu" and untold["dev"] == on_gpu["dev"]
    assert dataclasses.replace(gpu1, told=False).describe().startswith("cuda (shown, not told")
    on_cpu = seen(SamplerDevice())
    assert on_cpu["device"] == "cpu" and on_cpu["dev"] == [] and not on_cpu["sys"]
    assert on_cpu["as"] == 3072 * 2**20


def test_a_policy_naming_a_gpu_that_is_not_here_stops_before_sampling(mri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mv, _ = log_generator(DeviceReporter(), "reporter", tracking_uri=uri)
    policy = write_policy(tmp_path / "p.yaml", mri["train"], mri["holdout"])
    policy.write_text(policy.read_text().replace("    batch_size: 8\n", "    batch_size: 8\n    device: cuda:99\n"))
    res = CliRunner().invoke(app, ["validate", "--model", f"models:/reporter/{mv.version}", "--policy", str(policy),
                                   "--tracking-uri", uri, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    assert "spec.candidate.device: cuda:99 asked for" in res.output
    assert not (tmp_path / "out").exists()
