"""Engine settings are valid once they exist: checked on construction, string switches as enums."""

import json
from dataclasses import asdict

import pytest

from uafp_gui.errors import ConfigError
from uafp_gui.recon.choices import Device, Loss, StopReason, parse_device
from uafp_gui.recon.classic import ClassicSettings
from uafp_gui.recon.uafp import STOP_REASONS, UafpSettings


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"loss": "l2"}, "loss must be one of amplitude, poisson"),
        ({"device": "tpu"}, "unknown device 'tpu': use auto, cpu, cuda"),
        ({"iterations": -1}, "iterations"),
        ({"upsample": 0}, "upsample"),
        ({"tv_weight": float("nan")}, "tv_weight"),
        ({"lr_object": -0.1}, "lr_object"),
    ],
)
def test_uafp_settings_are_checked_on_construction_and_replace(changes, message):
    with pytest.raises(ConfigError, match=message):
        UafpSettings(**changes)
    with pytest.raises(ConfigError, match=message):
        UafpSettings().replace(**changes)


def test_string_switches_become_enum_members_and_serialise_as_strings():
    settings = UafpSettings(loss="poisson", device="CPU")
    assert settings.loss is Loss.POISSON and settings.device is Device.CPU
    assert json.loads(json.dumps(asdict(settings)))["loss"] == "poisson"
    assert f"{settings.device}" == "cpu" and settings.loss == "poisson"


def test_classic_settings_are_checked_on_construction():
    with pytest.raises(ConfigError, match="iterations"):
        ClassicSettings(iterations=0)
    with pytest.raises(ConfigError, match="unknown device"):
        ClassicSettings(device="mps")
    assert ClassicSettings(device="cuda").device is Device.CUDA


def test_device_names():
    assert parse_device("") is Device.AUTO and parse_device("Cuda") is Device.CUDA
    with pytest.raises(ConfigError):
        parse_device("cuda:0x")


def test_stop_reasons_are_the_documented_strings():
    assert [str(reason) for reason in STOP_REASONS] == [
        "completed", "converged", "cancelled", "interrupted", "diverged", "engine_error", "error"
    ]
    assert StopReason("converged") is StopReason.CONVERGED
