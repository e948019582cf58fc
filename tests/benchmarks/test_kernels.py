"""The kernel profiler: fused ops, kernel times and the paired timing, on a tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import kernels, peers
from tests.benchmarks.test_harness import conv_relu, feeds


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("kernels")
    fp32 = conv_relu(folder / "fp32.onnx")
    int8 = peers.ort_static_best(fp32, [feeds(s) for s in range(4)], folder / "int8.onnx")
    assert isinstance(int8, Path), int8
    return fp32, int8


def test_profile_sees_onnxruntime_fusions(models: tuple[Path, Path]) -> None:
    fp32, int8 = models
    found = kernels.profile([fp32, int8], kernels.synthetic_feeds(fp32), runs=20)

    assert [f.path for f in found] == [fp32, int8]
    # The float Conv + Relu run as one Conv in the blocked layout; the QDQ pairs fold into
    # a QLinearConv, and no float Conv is left beside it.
    assert found[0].fused_ops.get("Conv") == 1 and "Relu" not in found[0].fused_ops
    assert found[1].fused_ops.get("QLinearConv") == 1 and "Conv" not in found[1].fused_ops
    for profile in found:
        assert profile.total_us > 0
        assert profile.total_us == pytest.approx(sum(us for us, _, _ in profile.by_node))
        assert [us for us, _, _ in profile.by_node] == sorted(
            (us for us, _, _ in profile.by_node), reverse=True)


def test_command_prints_profiles_and_paired_timing(
    models: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fp32, int8 = models
    assert kernels.main([str(fp32), str(int8), "--runs", "10", "--repeats", "3"]) == 0

    out = capsys.readouterr().out
    assert out.count("ops after onnxruntime's fusions:") == 2
    assert "QLinearConv 1" in out
    assert "paired with the first:" in out
    assert "1.00x (75% interval 1.00-1.00x over 3 repeats)  0: " in out


def test_missing_model_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kernels.main([str(tmp_path / "absent.onnx")]) == 2
    assert capsys.readouterr().err.strip() == f"models: no such file: {tmp_path / 'absent.onnx'}"
