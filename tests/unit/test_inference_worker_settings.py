"""Inference worker settings (nnU-Net process count, retry policy) and the label-map check
every loaded model passes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from spinecloud_inference.backends import check_label_map
from spinecloud_inference.worker_settings import (
    NNUNET_PROCESSES_ENV,
    InferenceWorkerSettings,
    configure_nnunet_environment,
)
from spinecloud_shared.errors import ModelArtifactError, ModelLabelError
from spinecloud_shared.jobs import RetryPolicy
from spinecloud_shared.models.manifest import Backend, Manifest

_PROBE = (
    "import spinecloud_inference.tasks, nnunetv2.configuration as c; print(c.default_num_processes)"
)


def _nnunet_processes_seen(env: dict[str, str]) -> int:
    """nnU-Net's process count in a fresh worker process that imported the task module."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "SPINECLOUD_"))}
    result = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return int(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_worker_sets_nnunet_processes_before_nnunet_is_imported() -> None:
    pytest.importorskip("nnunetv2")
    assert _nnunet_processes_seen({"SPINECLOUD_INFERENCE_NNUNET_PROCESSES": "3"}) == 3


def test_default_nnunet_processes_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPINECLOUD_INFERENCE_NNUNET_PROCESSES", raising=False)
    assert InferenceWorkerSettings().nnunet_processes == 1  # nnU-Net's own default is 8


def test_configure_keeps_an_explicit_nnunet_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(NNUNET_PROCESSES_ENV, raising=False)
    configure_nnunet_environment(InferenceWorkerSettings(nnunet_processes=4))
    assert os.environ[NNUNET_PROCESSES_ENV] == "4"
    configure_nnunet_environment(InferenceWorkerSettings(nnunet_processes=1))
    assert os.environ[NNUNET_PROCESSES_ENV] == "4"


def test_retry_policy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINECLOUD_INFERENCE_RETRY_MAX", "3")
    monkeypatch.setenv("SPINECLOUD_INFERENCE_RETRY_BASE_S", "0.25")
    policy = InferenceWorkerSettings().retry_policy()
    assert policy == RetryPolicy(max_retries=3, base_s=0.25, max_delay_s=300.0)
    assert [policy.delay_s(n) for n in range(3)] == [0.25, 0.5, 1.0]
    assert not policy.allows(3)


def test_default_retry_policy_is_the_shared_one() -> None:
    assert InferenceWorkerSettings().retry_policy() == RetryPolicy()


def _manifest(mapping: dict[int, int]) -> Manifest:
    return Manifest(
        name="m",
        version="1",
        backend=Backend.MONAI_BUNDLE,
        labels=mapping,
        target_spacing_mm=(2.0, 2.0, 2.0),
        patch_size=(32, 32, 32),
    )


@pytest.mark.parametrize(
    ("mapping", "channels", "message"),
    [
        ({0: 0, 1: 23, 2: 24, 3: 26}, 3, r"channels \[3\] but the network has 3"),
        ({0: 0, 1: 23}, 3, r"output channels \[2\] have no canonical id"),
        ({0: 0, 1: 0, 2: 0}, 3, "no output channel maps to a vertebra"),
    ],
)
def test_labels_that_do_not_map_to_vertebrae_are_refused(
    mapping: dict[int, int], channels: int, message: str
) -> None:
    with pytest.raises(ModelLabelError, match=message) as caught:
        check_label_map(_manifest(mapping), channels)
    assert caught.value.code == "model_labels_unmapped"
    assert isinstance(caught.value, ModelArtifactError)


def test_a_spine_label_map_passes() -> None:
    check_label_map(_manifest({0: 0, 1: 23, 2: 24, 3: 0}), 4)


def test_celery_retry_limit_follows_the_policy() -> None:
    """Celery re-raises past the task's ``max_retries`` (default 3) whatever the policy says;
    the task's limit must be the policy's, or a job would stay running after the 3rd retry."""
    from spinecloud_inference.tasks import segment_series
    from spinecloud_inference.worker_settings import get_worker_settings

    assert segment_series.max_retries == get_worker_settings().retry_policy().max_retries
