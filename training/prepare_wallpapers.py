"""Build the default model's training and validation folders from Debian wallpaper packages.

Training: the photographs of the Debian wallpaper/background packages below (listed, so the
choice is reviewable) and their rendered/illustrated images (every raster wallpaper of
gnome-backgrounds, mate's abstract and desktop sets, one size of sway's, lomiri's painted ones and
desktop-base's theme renders), each saved at long side 1024 and 512 px (Lanczos, PNG) so crops see
detail at two scales. Validation: `plasma-workspace-wallpapers`, which training never sees, at its
2560-px size: 10 photographs (val/) and 12 rendered wallpapers (val_illustrations/).

    python training/prepare_wallpapers.py /tmp/wallpapers    # needs apt-get and dpkg-deb

Writes OUT/train/*.png, OUT/val/*.{jpg,png}, OUT/val_illustrations/*, and OUT/val384/*.png (each
validation photo shrunk to long side 384 exactly as `infdit eval --max-side 384` does, for
validation during training); the downloaded packages stay in OUT/debs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

TRAIN = {
    "lomiri-wallpapers-16.04": [
        "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "greentock_by_Peter_Nerlich.jpg",
        "seeding_by_Clements_Engelhardt.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg", "Dragonfly_by_Bolly.jpg",
        "friends_by_Aitzol_Berasategi.jpg", "sunset_by_Aitzol_Berasategi.jpg", "free_by_Peter_Nerlich.jpg",
        "picosdeeuropa_by_Aitzol_Berasategi.jpg", "Picture_0B_by_freespace.jpg", "life_by_Aitzol_Berasategi.jpg",
        "analogpattern_by_Peter_Nerlich.jpg", "Bridge_by_Sander_Klootwijk.jpg",
    ],
    "lomiri-wallpapers-20.04": ["Kleiber_by_Lukas_Baubkus.jpg", "Infinite-Sea_by_Aury88.jpg"],
    "mate-backgrounds": [
        "nature/Garden.jpg", "nature/Dune.jpg", "nature/Wood.jpg", "nature/Aqua.jpg", "nature/TwoWings.jpg",
        "nature/Storm.jpg", "nature/GreenMeadow.jpg", "nature/RainDrops.jpg", "nature/Blinds.jpg",
        "nature/LadyBird.jpg", "nature/YellowFlower.jpg", "nature/FreshFlower.jpg",
    ],
}
# Rendered and drawn images: glob patterns per package (one size of each design).
TRAIN_ILLUSTRATIONS = {
    "gnome-backgrounds": ["*.webp"],
    "mate-backgrounds": ["abstract/Elephants.jpg", "abstract/*.png", "desktop/*.png", "desktop/*.jpg"],
    "sway-backgrounds": ["Sway_Wallpaper_Blue_2048x1536.png"],
    "lomiri-wallpapers-20.04": ["Fossa_by_Jasper_Roks.jpg", "Painting-Colors_by__herobrine7gamer.jpg"],
    "desktop-base": ["*-theme/grub/grub-16x9.png"],
}
VALIDATION = ["Autumn", "BytheWater", "ColdRipple", "ColorfulCups", "EveningGlow", "FallenLeaf", "Grey",
              "OneStandsOut", "Path", "summer_1am"]
VALIDATION_ILLUSTRATIONS = ["Canopee", "Cascade", "Cluster", "Elarun", "Flow", "FlyingKonqui", "IceCold",
                            "Kokkini", "Opal", "PastelHills", "SafeLanding", "Shell"]
TRAIN_SIDES = (1024, 512)


def extract(package: str, debs: Path) -> Path:
    """Download one package's .deb with apt-get and unpack it; returns the unpacked root."""
    root = debs / package
    if not root.is_dir():
        debs.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True, capture_output=True)
        deb = next(debs.glob(f"{package}_*.deb"))
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def find(root: Path, relative: str) -> Path:
    matches = [p for p in root.rglob(Path(relative).name) if str(p).endswith(relative)]
    if not matches:
        raise SystemExit(f"{relative} not found under {root}")
    return matches[0]


def save_long_side(src: Path, dst: Path, side: int) -> None:
    with Image.open(src) as im:
        im = im.convert("RGB")
        s = side / max(im.size)
        if s < 1:
            im = im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.Resampling.LANCZOS)
        im.save(dst)


def shrink_validation(src: Path, dst: Path, side: int) -> None:
    """The evaluation's own HR preparation (Lanczos to long side `side`, cropped to ×4), saved as PNG."""
    import numpy as np

    from infdit_cli.evaluate import load_hr

    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        hr = load_hr(path, side)[0].permute(1, 2, 0).numpy()
        Image.fromarray((hr * 255).round().astype(np.uint8)).save(dst / f"{path.stem}.png")


def main(out: Path) -> None:
    debs, train, val = out / "debs", out / "train", out / "val"
    train.mkdir(parents=True, exist_ok=True)
    val.mkdir(parents=True, exist_ok=True)
    for package, names in TRAIN.items():
        root = extract(package, debs)
        for name in names:
            src = find(root, name)
            for side in TRAIN_SIDES:
                save_long_side(src, train / f"{src.stem}_{side}.png", side)
    for package, patterns in TRAIN_ILLUSTRATIONS.items():
        root = extract(package, debs) / "usr/share"
        for pattern in patterns:
            for src in sorted(root.rglob(pattern)):
                stem = f"{src.parent.parent.name}_{src.stem}" if package == "desktop-base" else src.stem
                for side in TRAIN_SIDES:
                    save_long_side(src, train / f"art_{stem}_{side}.png", side)
    plasma = extract("plasma-workspace-wallpapers", debs) / "usr/share/wallpapers"
    for folder, names in ((val, VALIDATION), (out / "val_illustrations", VALIDATION_ILLUSTRATIONS)):
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            images = sorted((plasma / name / "contents/images").iterdir(), key=lambda p: int(p.name.split("x")[0]))
            src = next((p for p in images if p.name.startswith("2560x")), images[-1])
            (folder / f"{name}{src.suffix}").write_bytes(src.read_bytes())
    shrink_validation(val, out / "val384", 384)
    print(f"{len(list(train.iterdir()))} training files, {len(list(val.iterdir()))} validation files in {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/wallpapers"))
