import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
BENCHMARK = BENCHMARKS / "run.py"


def test_benchmark_script_runs_on_the_tiny_model(tmp_path: Path) -> None:
    """The timings themselves live in BENCHMARKS.md; here only that the script works end to end."""
    output = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, str(BENCHMARK), "--size", "tiny", "--output", str(output)], check=True, capture_output=True
    )
    results = json.loads(output.read_text())
    for section, key in (("t2v", "per_step_ratio"), ("refinement", "ratio_to_t2v"), ("training", "ratio")):
        assert results[section][key] > 0
    assert results["t2v"]["prior_draw_seconds"] < results["t2v"]["vcd_seconds"]
    assert results["command"] == "python benchmarks/run.py --size tiny"


def test_flags_benchmark_loads_each_setting_through_magicme_in_its_own_process(tmp_path: Path) -> None:
    output = tmp_path / "flags.json"
    command = [sys.executable, str(BENCHMARKS / "flags.py"), "--size", "tiny", "--output", str(output)]
    subprocess.run([*command, "--only=--vae-s", "--only=--preset lightning-4"], check=True, capture_output=True)
    flags = json.loads(output.read_text())["flags"]
    assert list(flags) == ["--vae-slicing", "--preset lightning-4"]
    for measured in flags.values():
        assert measured["clip_seconds"] > 0 and measured["peak_memory_gb"] > 0


def test_memory_and_batching_benchmark_compares_each_change_with_the_stock_path(tmp_path: Path) -> None:
    output = tmp_path / "memory.json"
    command = [sys.executable, str(BENCHMARKS / "memory_and_batching.py"), "--size", "tiny", "--output", str(output)]
    subprocess.run([*command, "--parts", "tiles", "training"], check=True, capture_output=True)
    results = json.loads(output.read_text())
    assert list(results["tiles"]["batches"]) == ["1", "9"]
    assert results["tiles"]["max_abs_difference"] < 1e-4, "9 tiles in one batch denoise as one at a time"
    assert results["training"]["cached_seconds"] > 0 and results["training"]["encoding_every_step_seconds"] > 0


def test_packed_training_benchmark_times_both_ways_and_compares_the_rows(tmp_path: Path) -> None:
    output = tmp_path / "packed.json"
    command = [sys.executable, str(BENCHMARKS / "packed_training.py"), "--identities", "2", "--steps", "2"]
    subprocess.run([*command, "--output", str(output)], check=True, capture_output=True)
    results = json.loads(output.read_text())
    assert set(results["ways"]) == {"one at a time", "together"}
    assert results["max_row_difference"] < 1e-4 and results["speedup"] > 0


def test_guidance_sweep_measures_each_scale_on_the_world_model(tmp_path: Path) -> None:
    """The figures live in the README; here only that the sweep scores every scale in range."""
    output = tmp_path / "guidance.json"
    command = [sys.executable, str(BENCHMARKS / "world_guidance.py"), "--identities", "1", "--scales", "3", "7.5"]
    command += ["--inference-steps", "5"]
    subprocess.run([*command, "--output", str(output)], check=True, capture_output=True)
    scales = json.loads(output.read_text())["scales"]
    assert list(scales) == ["3.0", "7.5"]
    for measured in scales.values():
        assert 0 <= measured["face_found"] <= 1 and 1 <= measured["rank"] <= 40 and -1 <= measured["identity"] <= 1


def test_demo_chain_benchmark_measures_every_setting_on_the_world_model(tmp_path: Path) -> None:
    """The figures live in the README; here only that each setting of the chain is measured in range."""
    output = tmp_path / "chain.json"
    command = [sys.executable, str(BENCHMARKS / "world_demo_chain.py"), "--identities", "1", "--training-steps", "5"]
    command += ["--inference-steps", "10"]  # Tiled VCD at 0.1 needs 10 to denoise one
    subprocess.run([*command, "--output", str(output)], check=True, capture_output=True)
    rows = json.loads(output.read_text())["identities"]["1000"]
    assert len(rows) == 2 + 4 + 1 + 4  # framings, Face VCD strengths per framing, Lanczos, Tiled VCD settings
    for measured in rows.values():
        assert 1 <= measured["rank"] <= 40 and 0 <= measured["face_found"] <= 1 and 0 <= measured["scene"] <= 1


def test_refinement_benchmark_refuses_the_report_split_for_choosing_and_scores_every_stage(tmp_path: Path) -> None:
    """Settings are chosen on identities 1000 to 1009 only; the report split is never chosen on."""
    from magicme.errors import SettingError
    from magicme.world.recipe import choosing_split

    with pytest.raises(SettingError, match="chosen on at most 10 identities"):
        choosing_split(11)
    output = tmp_path / "refinement.json"
    command = [sys.executable, str(BENCHMARKS / "world_refinement.py"), "--split", "report", "--identities", "1"]
    command += ["--seeds", "2", "--training-steps", "5", "--inference-steps", "10", "--output", str(output)]
    printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rows = json.loads(output.read_text())["identities"]["1010"]
    assert len(rows) == 2 * 3 + 2 and all(len(scores) == 2 for scores in rows.values())  # 2 framings x 3, 2 upscales
    for scores in rows.values():
        assert all(1 <= score["rank"] <= 40 and -1 <= score["identity"] <= 1 for score in scores)
    assert "| close | Tiled VCD 2x |" in printed and "helps / hurts / neutral" in printed


def test_presets_benchmark_times_each_sampler_against_stock_diffusers(tmp_path: Path) -> None:
    """The figures live in BENCHMARKS.md; here only that every sampler is timed and scored in range."""
    output = tmp_path / "presets.json"
    # Two seeds: an identity's second clip once failed (the loop had rebound the recipe to the first one's settings).
    command = [sys.executable, str(BENCHMARKS / "world_presets.py"), "--identities", "1", "--seeds", "2"]
    command += ["--training-steps", "5", "--inference-steps", "5", "--output", str(output)]
    subprocess.run(command, check=True, capture_output=True)
    samplers = json.loads(output.read_text())["samplers"]
    assert len(samplers) == 5 and all(len(cell["seconds"]) == 2 for cell in samplers.values())
    for name, cell in list(samplers.items())[1:]:
        assert 1 <= cell["rank"][0] <= 40 and 0 <= cell["found"][0] <= 1, name


def test_regions_benchmark_times_binding_against_the_shared_prompt_and_stock(tmp_path: Path) -> None:
    output = tmp_path / "regions.json"
    command = [sys.executable, str(BENCHMARKS / "regions.py"), "--size", "tiny", "--output", str(output)]
    subprocess.run(command, check=True, capture_output=True)
    results = json.loads(output.read_text())
    assert set(results["variants"]) == {"stock diffusers", "shared prompt", "bound to regions"}
    assert all(variant["seconds"] > 0 for variant in results["variants"].values())
    assert results["bound_per_step_ratio_to_shared"] > 0


def test_groups_benchmark_scores_each_way_of_filming_on_the_same_noise_for_each_pair(tmp_path: Path) -> None:
    """The figures live in the README; here that each clip is scored for the shared prompt and each
    binding start, in range, and compared with the shared prompt from the same noise."""
    output = tmp_path / "groups.json"
    command = [sys.executable, str(BENCHMARKS / "world_groups.py"), "--split", "choose", "--pairs", "1"]
    command += ["--seeds", "1", "--training-steps", "5", "--inference-steps", "5", "--output", str(output)]
    command += ["--framings", "medium", "--binding-starts", "0", "0.4"]
    printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    record = json.loads(output.read_text())
    assert record["pairs"] == [[1000, 1001]] and len(record["clips"]) == 3  # the shared prompt, bound from 2 starts
    for clip in record["clips"]:
        assert all(1 <= rank <= 40 for rank in clip["lineup_ranks"]) and 0 <= clip["swapped"] <= 1
    bound = ["regional binding (automatic layout)", "regional binding from 40% of the steps (automatic layout)"]
    assert list(record["wins"]["medium"]) == bound and all(f"| medium | {way} |" in printed for way in bound)
    assert all(sum(record["wins"]["medium"][way].values()) == 1 for way in bound)
    moved = record["rank_changes"]["medium"][bound[1]]
    assert moved["better"] + moved["worse"] + moved["same"] == 2  # each identity of the pair, one seed


def test_singles_benchmark_films_each_identity_alone_at_both_framings(tmp_path: Path) -> None:
    output = tmp_path / "singles.json"
    command = [sys.executable, str(BENCHMARKS / "world_singles.py"), "--identities", "1", "--seeds", "1"]
    command += ["--training-steps", "5", "--inference-steps", "5", "--output", str(output)]
    printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    clips = json.loads(output.read_text())["clips"]
    assert [(clip["identity"], clip["framing"]) for clip in clips] == [(1000, "close"), (1000, "medium")]
    assert all(1 <= clip["rank"] <= 40 and 0 <= clip["fidelity"] <= 1 for clip in clips)
    assert "| close |" in printed and "| medium |" in printed
