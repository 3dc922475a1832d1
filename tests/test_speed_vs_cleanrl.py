"""benchmarks/speed_vs_cleanrl.py: pairs each script with its CleanRL family, alternates the order, divides."""

import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location(
    "speed_vs_cleanrl", os.path.join(ROOT, "benchmarks", "speed_vs_cleanrl.py")
)
speed = importlib.util.module_from_spec(spec)
sys.modules["speed_vs_cleanrl"] = speed  # dataclasses look their module up there
spec.loader.exec_module(speed)


def test_last_sps_reads_both_output_styles():
    assert speed.last_sps("step 1 | SPS 120\nstep 2 | SPS 130 | updates/s 4.0") == 130.0  # ours
    assert speed.last_sps("SPS: 90\nglobal_step=5, episodic_return=3\nSPS: 95\n") == 95.0  # CleanRL's
    with pytest.raises(RuntimeError):
        speed.last_sps("no rate here")


def test_runs_alternate_order_and_the_ratio_is_ours_over_cleanrl(monkeypatch, capsys):
    calls = []

    def fake_run(command, cwd, extra_env=None):
        cleanrl = command[1].endswith("_continuous_action.py")
        calls.append(("cleanrl" if cleanrl else "ours", os.path.basename(command[1])))
        assert command[command.index("--num-envs") + 1] == "8"  # --common reaches both scripts
        if cleanrl:
            assert extra_env["PYTHONPATH"] == "/cleanrl"
        return 100.0 if cleanrl else 75.0

    monkeypatch.setattr(speed, "run", fake_run)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "speed_vs_cleanrl.py",
            "--cleanrl-dir",
            "/cleanrl",
            "--scripts",
            "diffppo.py",
            "diffsac.py",
            "--repeats",
            "2",
            "--common=--num-envs 8",
        ],
    )
    speed.main()
    assert calls == [
        ("ours", "diffppo.py"),
        ("cleanrl", "ppo_continuous_action.py"),
        ("ours", "diffsac.py"),
        ("cleanrl", "sac_continuous_action.py"),
        ("cleanrl", "ppo_continuous_action.py"),
        ("ours", "diffppo.py"),
        ("cleanrl", "sac_continuous_action.py"),
        ("ours", "diffsac.py"),
    ]
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| diff")]
    assert len(rows) == 4 and all(row.rstrip(" |").endswith("0.75") for row in rows)


def test_unknown_script_is_refused(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["speed_vs_cleanrl.py", "--cleanrl-dir", "/c", "--scripts", "diffreppo.py"])
    with pytest.raises(SystemExit, match="allowed"):
        speed.main()
