"""Issue 2: logging and downloading on a local registry against `cp` of the same bytes."""

from __future__ import annotations

from functools import partial

from .common import (
    Row,
    log_artifact,
    make_big_file,
    make_small_files,
    median_time,
    read_chars,
    remove,
    sh,
    workdir,
)

GIB = 1024**3


def run(quick: bool) -> list[Row]:
    rows: list[Row] = []
    runs = 3 if quick else 5
    big_size = 256 * 1024**2 if quick else GIB
    n_small = 2_000 if quick else 10_000
    with workdir("core") as w:
        big = make_big_file(w / "big.bin", big_size)
        small = make_small_files(w / "small", n_small, 4096)
        reg, cache = w / "reg", w / "cache"

        def fresh() -> None:
            remove(reg, cache, w / "copy", w / "dl")

        log = partial(log_artifact, reg, cache)
        label = f"{big_size // 1024**2} MiB"
        ours = median_time(lambda: log("big", lambda a: a.add_file(big)), runs, fresh)
        base = median_time(lambda: sh("cp", str(big), str(w / "copy")), runs, fresh)
        rows.append(Row(f"log_artifact 1 file of {label}", ours, "cp", base, "<= 2.0"))

        ours = median_time(lambda: log("small", lambda a: a.add_dir(small)), runs,
                           fresh)
        base = median_time(lambda: sh("cp", "-r", str(small), str(w / "copy")), runs, fresh)
        rows.append(Row(f"log_artifact {n_small} x 4 KiB", ours, "cp -r", base, "<= 2.0"))

        # Re-log the unchanged folder: no new version, no bytes re-read.
        fresh()
        art = log("small", lambda a: a.add_dir(small))
        before = read_chars()
        relog = median_time(lambda: log("small", lambda a: a.add_dir(small)), runs)
        read_per_relog = (read_chars() - before) / runs
        again = log("small", lambda a: a.add_dir(small))
        assert again.version == art.version, "re-log of unchanged files made a new version"
        # The least a re-log can do is look at every file once: `find` stats each of them.
        stat_all = median_time(lambda: sh("find", str(small), "-type", "f", "-printf",
                                          "%s %T@\n"), runs)
        rows.append(Row(f"re-log {n_small} unchanged files", relog,
                        "find -printf size+mtime (a stat each)", stat_all,
                        f"<= {0.2 * n_small / 10_000:g} s (0.2 s per 10k)",
                        note=f"{relog * 10_000 / n_small:.3f} s per 10k files; "
                             f"{read_per_relog / 1024:.0f} KiB read per re-log (all files: "
                             f"{n_small * 4} KiB)"))

        def clear_dl() -> None:
            remove(w / "dl", w / "copy")

        ours = median_time(lambda: art.download(w / "dl"), runs, clear_dl)
        base = median_time(lambda: sh("cp", "-r", str(small), str(w / "copy")), runs, clear_dl)
        rows.append(Row(f"download() {n_small} x 4 KiB into empty folder", ours, "cp -r", base,
                        "<= 2.0"))
        art.download(w / "dl")
        ours = median_time(lambda: art.download(w / "dl"), runs)
        rows.append(Row(f"download() {n_small} x 4 KiB, all present", ours, "cp -r", base,
                        "<= 2.0"))

        fresh()
        big_art = log("big", lambda a: a.add_file(big))
        ours = median_time(lambda: big_art.download(w / "dl"), runs, clear_dl)
        base = median_time(lambda: sh("cp", str(big), str(w / "copy")), runs, clear_dl)
        rows.append(Row(f"download() 1 file of {label}", ours, "cp", base, "<= 2.0"))
    return rows
