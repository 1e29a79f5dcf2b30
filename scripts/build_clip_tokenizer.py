"""Write SD-1.5's CLIP tokenizer files (vocab.json, merges.txt) from open-clip's BPE table.

The CLIP BPE vocabulary that Stable Diffusion 1.5 uses ships inside the open-clip-torch
wheel (MIT licence). This script rebuilds the Hugging Face tokenizer files from it so that
magicme carries a real tokenizer and needs no model hub. Run:

    pip download --no-deps open-clip-torch==3.3.0 -d /tmp/oc
    python scripts/build_clip_tokenizer.py /tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl
"""

import gzip
import json
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src/magicme/configs/sd15/tokenizer"
MERGE_COUNT = 49152 - 256 - 2  # CLIP's table: 256 bytes, 256 word-final bytes, merges, 2 specials


def bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-to-printable-character table, in CLIP's order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(code) for code in codes]


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as archive:
        table = gzip.decompress(archive.read("open_clip/bpe_simple_vocab_16e6.txt.gz"))
    merges = table.decode("utf-8").split("\n")[1 : MERGE_COUNT + 1]
    chars = bytes_to_unicode()
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
