"""Two learned identities in one clip: the shared prompt against regional binding, in the miniature world.

    python benchmarks/world_groups.py --split choose   # chooses the recipe's group framing (close or medium)
    python benchmarks/world_groups.py                  # the report split, at the recipe's framing

Pairs of held-out identities, each learned alone from its five photos the recipe's way, then
filmed together at the recipe's framing ("a photo of a <hero> person and a <friend> person on the snow"),
16 frames, several seeds, a scene per seed. Each clip is rendered twice from the same noise:
with the prompt shared by both identities everywhere (`--layout shared`: magicme before
regions, and every other SD-1.5 pipeline) and with regional binding (the automatic layout:
<hero> left, <friend> right). `magicme.world.groups` scores each clip: each identity's lineup
rank in its own region, the share of frames with both recognised in the right place, and the
share with an identity recognised in the other's region (swapped). Against the shared prompt from
the same noise it also counts the clips binding puts both in place in more frames (wins) and the
identities it ranks better in their region (rank_changes, with the mean change and its standard error).
Writes benchmarks/results-world-groups-SPLIT.json and prints the Markdown table.
"""

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from record import add_steps_option, recipe_with_steps, write_record

from magicme.identity.train import train_identity
from magicme.io.video import to_uint8
from magicme.models.loading import load_pipeline
from magicme.settings import ModelSettings
from magicme.t2v.generate import generate
from magicme.t2v.layout import SHARED
from magicme.world import scenes
from magicme.world.groups import score_group
from magicme.world.model import world_model_paths
from magicme.world.recipe import RECIPE, WorldRecipe, choosing_split, reporting_split

HERE = Path(__file__).resolve().parent
SHARED_PROMPT = "shared prompt (no regions)"


def variants(starts: list[float]) -> dict[str, dict[str, object]]:
    """Each way of filming a pair, as changes to the recipe's generation settings: the shared prompt,
    and regional binding from each start (the share of sampling steps that read the whole prompt first)."""
    bound = {
        f"regional binding{f' from {start:.0%} of the steps' if start else ''} (automatic layout)": {
            "layout": "",
            "binding_start": start,
        }
        for start in starts
    }
    return {SHARED_PROMPT: {"layout": SHARED}} | bound


SPLITS = {"choose": (choosing_split, 10, ("close", "medium")), "report": (reporting_split, 12, None)}


def learn(recipe: WorldRecipe, identity: int, name: str, work: Path, base: Path) -> str:
    """The identity learned alone from its photos, the recipe's way, under `name`; returns its file."""
    photos, folder = work / f"photos-{identity}", work / f"identity-{identity}"
    scenes.write_identity_photos(photos, identity)
    changes = {"name": name, "output_dir": str(folder), "checkpoint_every": 1000, "base_model": str(base)}
    train_identity(recipe.training(photos, **changes))
    return str(folder / f"{name}.safetensors")


def measure_pair(
    recipe: WorldRecipe,
    pair: tuple[int, ...],
    framings: tuple[str, ...],
    seeds: list[int],
    work: Path,
    model_dir: Path | None,
    ways: dict[str, dict[str, object]],
) -> list[dict]:
    """Every clip of one pair: per framing, seed and variant, the clip's three figures."""
    base, motion = world_model_paths(model_dir)
    names = recipe.group_names
    files = [learn(recipe, identity, name, work, base) for identity, name in zip(pair, names, strict=True)]
    pipe = load_pipeline(ModelSettings(base_model=str(base), motion_adapter=str(motion), identities=files))
    clips = []
    for framing in framings:
        for seed in seeds:
            scene = list(scenes.SCENES)[(pair[0] + seed) % len(scenes.SCENES)]
            prompt = recipe.group_prompt(scene, distance=framing)
            for variant, changes in ways.items():
                frames = generate(pipe, recipe.group_generation(prompt, seed, **changes))
                score = score_group(list(to_uint8(frames)), list(pair))
                clips.append({"pair": pair, "framing": framing, "seed": seed, "variant": variant} | score.record())
    return clips


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ± {statistics.pstdev(values):.2f}"


def table(clips: list[dict]) -> str:
    """Per framing and variant: mean ± sd over identities x clips (rank) or clips (shares), and how
    many clips binding wins, ties and loses against the shared prompt on the same noise."""
    lines = [
        "| framing | prompt | lineup rank in own region (1 best, of 40) | both present, each in its place | swapped |",
        "|---|---|---|---|---|",
    ]
    for framing in dict.fromkeys(clip["framing"] for clip in clips):
        for variant in dict.fromkeys(clip["variant"] for clip in clips):
            mine = [clip for clip in clips if clip["framing"] == framing and clip["variant"] == variant]
            ranks = [rank for clip in mine for rank in clip["lineup_ranks"]]
            right, swapped = ([clip[key] for clip in mine] for key in ("both_right", "swapped"))
            lines.append(f"| {framing} | {variant} | {spread(ranks)} | {spread(right)} | {spread(swapped)} |")
    return "\n".join(lines)


def paired(clips: list[dict]) -> list[tuple[dict, dict]]:
    """Each bound clip with the shared-prompt clip made from the same noise: (shared, bound)."""
    shared = {(str(c["pair"]), c["framing"], c["seed"]): c for c in clips if c["variant"] == SHARED_PROMPT}
    return [(shared[(str(c["pair"]), c["framing"], c["seed"])], c) for c in clips if c["variant"] != SHARED_PROMPT]


def wins(clips: list[dict]) -> dict[str, dict[str, dict[str, int]]]:
    """Per framing and way of binding: the clips in which it puts both in place in more frames than the
    shared prompt does from the same noise, in as many, or in fewer."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for shared, bound in paired(clips):
        value, other = bound["both_right"], shared["both_right"]
        verdict = "wins" if value > other else "ties" if value == other else "loses"
        tally = counts.setdefault(bound["framing"], {}).setdefault(bound["variant"], {"wins": 0, "ties": 0, "loses": 0})
        tally[verdict] += 1
    return counts


def rank_changes(clips: list[dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Per framing and way of binding: how it moves each identity's rank in its own region against the
    shared prompt from the same noise (negative: better), counted and as a mean with its standard error."""
    changes: dict[str, dict[str, list[int]]] = {}
    for shared, bound in paired(clips):
        pairs = zip(bound["lineup_ranks"], shared["lineup_ranks"], strict=True)
        changes.setdefault(bound["framing"], {}).setdefault(bound["variant"], []).extend(a - b for a, b in pairs)
    return {framing: {variant: _moves(moved) for variant, moved in ways.items()} for framing, ways in changes.items()}


def _moves(moved: list[int]) -> dict[str, float]:
    return {
        "better": sum(d < 0 for d in moved),
        "worse": sum(d > 0 for d in moved),
        "same": moved.count(0),
        "mean change": statistics.mean(moved),
        "standard error": statistics.stdev(moved) / len(moved) ** 0.5 if len(moved) > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=SPLITS, default="report")
    parser.add_argument("--pairs", type=int, help="how many pairs of the split (default: all, 5 or 6)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--training-steps", type=int, default=RECIPE.training_steps)
    parser.add_argument(
        "--model-dir", type=Path, help="a world model folder (base/, motion_adapter/); default: shipped"
    )
    parser.add_argument(
        "--binding-starts",
        type=float,
        nargs="+",
        default=[RECIPE.binding_start],
        help="film the pair bound from each of these shares of the sampling steps (default: the recipe's)",
    )
    parser.add_argument(
        "--framings", nargs="+", choices=scenes.DISTANCES, help="default: both on the choose split, else the recipe's"
    )
    parser.add_argument("--output", type=Path)
    add_steps_option(parser)
    args = parser.parse_args()
    recipe = dataclasses.replace(recipe_with_steps(args), training_steps=args.training_steps)
    pick, count, framings = SPLITS[args.split]
    identities = pick(2 * args.pairs if args.pairs else count)
    pairs = [tuple(identities[i : i + 2]) for i in range(0, len(identities), 2)]
    framing = args.framings or framings or (recipe.group_framing,)
    ways = variants(args.binding_starts)
    started, clips = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as folder:
        for pair in pairs:
            clips += measure_pair(recipe, pair, framing, list(range(args.seeds)), Path(folder), args.model_dir, ways)
            print(f"pair {pair}: {len(clips)} clips so far", flush=True)
    text = table(clips)
    output = args.output or HERE / f"results-world-groups-{args.split}.json"
    model = str(args.model_dir or "the shipped world model")
    against = {"wins": wins(clips), "rank_changes": rank_changes(clips)}
    minutes = write_record(output, started, split=args.split, model=model, pairs=pairs, clips=clips, **against)
    print(f"{text}\n\nbinding against the shared prompt from the same noise: {against}\n({minutes:.1f} min; {output})")


if __name__ == "__main__":
    main()
