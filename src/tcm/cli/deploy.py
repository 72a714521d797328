"""``tcm match`` and ``tcm monitor`` (and the ``--save`` contract of ``tcm calibrate``).

* ``tcm calibrate SOURCE --far F --save threshold.json [--guarantee] [--ci L --n-boot N]``:
  writes the threshold contract (:mod:`tcm.deploy.contract`); with ``--guarantee`` the
  contract's threshold is the guaranteed-FAR one and the table of what the guarantee costs in
  TAR is printed. With a fitted scorer (``--scorer NAME ... --save-scorer S.safetensors``, which
  is then required, or ``--scorer-file S.safetensors``) the threshold is on the scorer's scale
  and the contract names that file (relative to the contract's folder when it lies there).
* ``tcm match --threshold threshold.json --gallery G --queries Q --out matches.csv`` writes, for
  each query, every gallery item with score ``>= t`` (``--top-k K``: at most K; ``--best``: the
  best item of every query with its decision); columns ``query,gallery,score,accepted`` (ids
  from the files, else row numbers). Exact blocked matching by default; ``--index ivf|hnsw``
  uses a faiss index after measuring its range recall against exact matching on a sample of
  queries (below ``--min-recall``: refused; below 1: a warning). The file is streamed to a
  temporary next to it and renamed at the end: a killed run leaves no partial ``--out``. A
  contract on a scorer's scale: the scorer file it names (or ``--scorer-file``, a copy) is loaded
  and verified by its SHA-256, and every pair is scored by it (exact matching only).
* ``tcm monitor --threshold threshold.json NEW [--labels] [--window N]``: per-window signals of
  :func:`tcm.deploy.monitor` (``--json``, ``--report DIR`` with the drift plot); exit code 3
  when an alarm fires.

Example:
    >>> from tcm.cli.main import main
    >>> main(["match", "--threshold", "t.json", "--gallery", "g.npz", "--queries", "q.npz",
    ...       "--out", "m.csv"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tcm.deploy.contract import Threshold

__all__ = ["EXIT_ALARM", "add_calibrate_args", "add_parsers", "save_contract"]

EXIT_ALARM = 3
"""``tcm monitor``: an alarm fired (the report and JSON are written first)."""
INDEX_KINDS = ("exact", "ivf", "hnsw")


# ----------------------------------------------------------------------------- calibrate --save


def add_calibrate_args(c: argparse.ArgumentParser) -> None:
    """``--save`` / ``--guarantee`` on ``tcm calibrate``."""
    c.add_argument(
        "--save",
        metavar="THRESHOLD.json",
        help="with --far: write the threshold contract for tcm match / tcm monitor",
    )
    c.add_argument(
        "--guarantee",
        action="store_true",
        help="with --save: the threshold whose class-bootstrap upper FAR bound (--ci level, "
        "default 0.95) is <= --far",
    )


def check_calibrate_args(args: argparse.Namespace) -> None:
    """Refuse ``--save`` / ``--guarantee`` where they would have no effect (before loading)."""
    from tcm.cli.main import _check_output_file

    if args.guarantee and not args.save:
        raise ValueError("--guarantee only applies with --save THRESHOLD.json (the contract)")
    if args.save:
        if args.far is None or args.on is not None:
            raise ValueError("--save needs --far F and no --on (the contract is for a target FAR)")
        kind = getattr(args, "scorer", None)
        if kind not in (None, "cosine") and getattr(args, "save_scorer", None) is None:
            raise ValueError(
                f"--save with --scorer {kind} needs --save-scorer OUT.safetensors: the contract "
                "names the scorer file that tcm match / tcm monitor load"
            )
        _check_output_file(args.save, "--save", (".json",))


def save_contract(args: argparse.Namespace, f: Any, labels: np.ndarray) -> Threshold:
    """Calibrate the contract on the loaded SOURCE ``f`` and write it to ``args.save``."""
    from tcm.cli.main import _out, console_text
    from tcm.deploy.guarantee import calibrate_threshold, tar_cost_lines

    ci = 0.95 if args.ci is None else float(args.ci)
    scorer_path = getattr(args, "scorer_file", None) or getattr(args, "save_scorer", None)
    c = calibrate_threshold(
        f.embeddings,
        labels,
        far=float(args.far),
        groups=f.groups,
        guarantee=bool(args.guarantee),
        ci=ci,
        n_boot=int(args.n_boot),
        source=str(args.source),
        scorer=scorer_path,
    )
    c.save(args.save)
    _out("")
    for line in tar_cost_lines(c.guarantee, float(args.far)):
        _out(line)
    rule = "upper bound" if c.method == "upper_bound" else "point estimate"
    if c.uses_scorer:
        rule += f", {c.score['scale']} scale of {console_text(str(c.score['file']))}"
    _out(f"contract threshold ({rule}): {c.threshold:.6f}; wrote {console_text(args.save)}")
    return c


# ----------------------------------------------------------------------------- match


def _ids(f: Any) -> list[str]:
    return list(f.ids) if f.ids is not None else [str(i) for i in range(f.embeddings.shape[0])]


def _load(path: str, what: str) -> Any:
    from tcm.cli.main import _load_source

    if not Path(path).is_file():
        raise ValueError(f"{what} file not found: {path}")
    return _load_source(path, labels=False)


def _faiss_index(gallery: np.ndarray, kind: str, seed: int = 0) -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ValueError(f"--index {kind} needs the faiss package (pip install faiss-cpu)") from exc
    d = gallery.shape[1]
    index: Any
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 128
    else:
        nlist = max(1, min(int(4 * math.sqrt(gallery.shape[0])), gallery.shape[0] // 39))
        quant = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quant, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        n_train = min(gallery.shape[0], 64 * nlist)
        index.train(gallery[rng.choice(gallery.shape[0], n_train, replace=False)])
        index.nprobe = min(nlist, 16)
    index.add(gallery)
    return index


def _faiss_range(index: Any, q: np.ndarray, t: float) -> tuple[np.ndarray, ...]:
    """Pairs with score ``>= t`` found by ``index.range_search`` (faiss keeps ``score > radius``,
    so the radius is the float32 just below ``t``), grouped by query, best first."""
    radius = float(np.nextafter(np.float32(t), np.float32(-np.inf)))
    lims, dist, lab = index.range_search(np.ascontiguousarray(q, dtype=np.float32), radius)
    qi = np.repeat(np.arange(q.shape[0]), np.diff(lims.astype(np.int64)))
    keep = (dist >= np.float32(t)) & (lab >= 0)
    qi, gi, s = qi[keep], lab[keep].astype(np.int64), dist[keep].astype(np.float32)
    o = np.lexsort((gi, -s.astype(np.float64), qi))
    return qi[o].astype(np.int64), gi[o], s[o]


def _faiss_blocks(index: Any, q: np.ndarray, t: float, block: int) -> Any:
    """:func:`_faiss_range` one block of queries at a time (global query indices)."""
    for a in range(0, q.shape[0], block):
        qi, gi, s = _faiss_range(index, q[a : a + block], t)
        yield qi + a, gi, s, np.ones(qi.shape[0], bool)


def range_recall(approx: tuple[np.ndarray, ...], exact: Any) -> float:
    """Share of the exact ``(query, gallery)`` pairs the approximate search found (1 if none)."""
    if len(exact) == 0:
        return 1.0
    a = set(zip(approx[0].tolist(), approx[1].tolist(), strict=True))
    e = zip(exact.query_index.tolist(), exact.gallery_index.tolist(), strict=True)
    found = sum(1 for p in e if p in a)
    return found / len(exact)


def _write_rows(
    fh: IO[bytes], qids: list[str], gids: list[str], parts: Any, counts: np.ndarray
) -> int:
    text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
    w = csv.writer(text)
    w.writerow(["query", "gallery", "score", "accepted"])
    n = 0
    for qi, gi, s, acc in parts:
        np.add.at(counts, qi, acc.astype(np.int64))
        w.writerows(
            (qids[a], gids[b], f"{float(v):.7g}", "1" if ok else "0")
            for a, b, v, ok in zip(qi.tolist(), gi.tolist(), s.tolist(), acc.tolist(), strict=True)
        )
        n += int(qi.shape[0])
    text.flush()
    text.detach()
    return n


def _cmd_match(args: argparse.Namespace) -> int:
    from tcm._io import atomic_write, remove_stale_temporaries
    from tcm.cli.main import _out, _warn, console_text
    from tcm.deploy.contract import Threshold
    from tcm.deploy.matcher import Matcher, normalized_rows

    remove_stale_temporaries(Path(args.out).parent)
    contract = Threshold.load(args.threshold)
    if contract.uses_scorer and args.index != "exact":
        raise ValueError(
            f"--index {args.index} searches by cosine; the contract's threshold is on the "
            f"{contract.score.get('scale')} scale of a {contract.score['kind']} scorer: use "
            "exact matching (no --index)"
        )
    scorer = contract.load_scorer(args.scorer_path)
    g, q = _load(args.gallery, "gallery"), _load(args.queries, "queries")
    for what, f in (("the gallery", g), ("the queries", q)):
        dim = int(f.embeddings.shape[1])
        contract.check_applicable(dim, scorer=scorer, what=f"{what} ({f.path})")
    start = time.perf_counter()
    matcher = Matcher(g.embeddings, contract, ids=_ids(g), scorer=scorer)
    qx = normalized_rows(q.embeddings, "queries")
    mode = "best" if args.best else "range"
    counts = np.zeros(qx.shape[0], np.int64)
    if args.index == "exact":
        parts: Any = (
            (r.query_index, r.gallery_index, r.score, r.accepted)
            for r in matcher.iter_matches(qx, top_k=args.top_k, mode=mode)
        )
    else:
        gal = matcher.gallery.numpy()
        index = _faiss_index(gal, args.index)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(qx.shape[0], min(qx.shape[0], args.recall_sample), False))
        exact = matcher.match(qx[sample])
        recall = range_recall(_faiss_range(index, qx[sample].numpy(), matcher.threshold), exact)
        _out(
            f"{args.index} index: range recall {recall:.4f} against exact matching on "
            f"{len(sample)} queries ({len(exact)} pairs)"
        )
        if recall < args.min_recall:
            raise ValueError(
                f"the {args.index} index found only {recall:.4f} of the exact matches on a sample "
                f"of {len(sample)} queries (--min-recall {args.min_recall}); use exact matching "
                "or a lower --min-recall"
            )
        if recall < 1.0:
            _warn(args.command, f"the {args.index} index misses {1 - recall:.2%} of the matches")
        parts = _faiss_blocks(index, qx.numpy(), matcher.threshold, matcher.query_block)
    qids, gids = _ids(q), matcher.ids or []
    box: dict[str, int] = {}

    def write(fh: IO[bytes]) -> None:
        box["n"] = _write_rows(fh, qids, gids, parts, counts)

    atomic_write(args.out, write)
    secs = time.perf_counter() - start
    score = str(contract.score.get("kind"))
    if contract.uses_scorer:
        score += f", {contract.score.get('scale')} scale"
    _out(
        f"threshold {contract.threshold:.6f} (score {score}, accept if >=); "
        f"gallery {matcher.size}, queries {qx.shape[0]}, mode "
        f"{mode if args.top_k is None else f'top-{args.top_k}'} ({args.index})"
    )
    _out(
        f"{box['n']} rows; queries with >= 1 accepted match: {int(np.count_nonzero(counts))}; "
        f"{secs:.2f} s; wrote {console_text(args.out)}"
    )
    return 0


def check_match_args(args: argparse.Namespace) -> None:
    """Option checks of ``tcm match`` (before loading)."""
    from tcm.cli.main import _check_at_least, _check_output_file

    _check_output_file(args.out, "--out", (".csv",))
    _check_at_least(args.top_k, "--top-k", 1)
    if args.best and args.top_k is not None:
        raise ValueError("--best returns one match per query; --top-k does not apply with it")
    if args.index == "exact":
        if args.min_recall is not None or args.recall_sample is not None:
            raise ValueError("--min-recall / --recall-sample only apply with --index ivf|hnsw")
    else:
        if args.best or args.top_k is not None:
            raise ValueError("--index ivf|hnsw supports the range mode only (no --top-k/--best)")
        if args.min_recall is None:
            args.min_recall = 0.99
        if not 0.0 < args.min_recall <= 1.0:
            raise ValueError(f"--min-recall must lie in (0, 1]; got {args.min_recall}")
        if args.recall_sample is None:
            args.recall_sample = 200
        _check_at_least(args.recall_sample, "--recall-sample", 1)


# ----------------------------------------------------------------------------- monitor


def _drift_plot(res: dict[str, Any]) -> bytes:
    from tcm.report.plots import _new_figure, figure_to_png

    ws = res["windows"]
    x = np.arange(len(ws))
    fig = _new_figure(7.0, 5.6)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    if res["labelled"]:
        far = np.array([np.nan if w.get("far") is None else w["far"] for w in ws])
        lo = np.array([w["far_interval"]["lo"] if w.get("far_interval") else np.nan for w in ws])
        hi = np.array([w["far_interval"]["hi"] if w.get("far_interval") else np.nan for w in ws])
        ax1.errorbar(x, far, yerr=[far - lo, hi - far], fmt="o-", label="FAR (labels)")
    ax1.plot(x, [w["acceptance_rate"] for w in ws], "s--", label="acceptance rate (all pairs)")
    ax1.axhline(res["target_far"], color="green", lw=1, label="target FAR")
    ax1.axhline(res["far_alarm_level"], color="red", ls=":", label="alarm level k x target")
    ax1.set_yscale("log")
    ax1.set_ylabel("rate at t")
    ax1.legend(fontsize=7)
    ax1.grid(alpha=0.3)
    for key, mark in (("top1", "o"), ("tail", "^")):
        p = [w.get(key, {}).get("ks_p") for w in ws]
        ax2.plot(x, [np.nan if v is None else max(v, 1e-300) for v in p], mark + "-", label=key)
    ax2.axhline(res["drift_test_level"], color="red", ls=":", label="alarm level")
    ax2.set_yscale("log")
    ax2.set_ylabel("KS p-value")
    ax2.set_xlabel("window")
    ax2.legend(fontsize=7)
    ax2.grid(alpha=0.3)
    return figure_to_png(fig)


def _write_report(out: str, res: dict[str, Any], new: str) -> Path:
    from tcm._io import atomic_write
    from tcm.report.html import figure, page, table

    rows = []
    for w in res["windows"]:
        far = "" if w.get("far") is None else f"{w['far']:.3e}"
        iv = w.get("far_interval")
        ivs = "" if not iv else f"[{iv['lo']:.2e}, {iv['hi']:.2e}]"
        p1 = w.get("top1", {}).get("ks_p")
        p2 = w.get("tail", {}).get("ks_p")
        rows.append(
            [
                str(w["window"]),
                f"{w['start']}-{w['stop']}",
                far,
                ivs,
                f"{w['acceptance_rate']:.3e}",
                "" if p1 is None else f"{p1:.2e}",
                "" if p2 is None else f"{p2:.2e}",
                "FAR" * w["far_alarm"] + " drift" * w["drift_alarm"],
            ]
        )
    head = ["window", "rows", "FAR", "FAR interval", "acceptance", "top-1 KS p", "tail KS p"]
    body = (
        f"<h1>FAR drift monitor</h1><p>new data {new}; threshold {res['threshold']:.6f}, target "
        f"FAR {res['target_far']:g}, alarm when the FAR interval's lower end exceeds "
        f"{res['far_alarm_level']:.3g} or a drift test p-value is below "
        f"{res['drift_test_level']:.2e}. {res['bound']}.</p>"
    )
    from tcm.report.html import esc

    body = body.replace(new, esc(new))
    body += table([*head, "alarm"], rows)
    body += figure(
        _drift_plot(res),
        alt="drift plot",
        filename="drift.png",
        caption="Rates at the threshold and drift-test p-values per window.",
    )
    html = page("tcm monitor", body)
    return atomic_write(Path(out) / "monitor.html", lambda fh: fh.write(html.encode()))


def _cmd_monitor(args: argparse.Namespace) -> int:
    from tcm._io import write_json
    from tcm.cli.main import _load_source, _out, console_text
    from tcm.deploy.contract import Threshold
    from tcm.deploy.monitor import monitor

    contract = Threshold.load(args.threshold)
    scorer = contract.load_scorer(args.scorer_path)
    f = _load(args.new, "new data")
    if args.labels and f.labels is None:
        raise ValueError(f"--labels: {args.new} has no array 'labels'")
    contract.check_applicable(
        int(f.embeddings.shape[1]), scorer=scorer, what=f"the new data ({args.new})"
    )
    gal = gl = None
    if args.gallery:
        gf = _load_source(args.gallery, labels=True)
        gal, gl = gf.embeddings, gf.labels
    res = monitor(
        contract,
        f.embeddings,
        f.labels if args.labels else None,
        f.groups,
        window=args.window,
        k=args.k,
        ci=args.level,
        n_boot=args.resamples,
        drift_alpha=args.drift_alpha,
        gallery=gal,
        gallery_labels=gl,
        scorer=scorer,
    ).to_dict()
    res["new"] = str(args.new)
    if args.json:
        write_json(args.json, res)
    if args.report:
        _write_report(args.report, res, str(args.new))
    scale = f" ({res['score']}, {res['score_scale']} scale)" if "score" in res else ""
    _out(
        f"threshold {res['threshold']:.6f}{scale}, target FAR {res['target_far']:g}; "
        f"{len(res['windows'])} window(s); drift tests at level {res['drift_test_level']:.2e}"
    )
    _out(f"{'window':>6} {'rows':>13} {'FAR':>10} {'FAR lo':>10} {'accept':>10} "
         f"{'top1 p':>9} {'tail p':>9}  alarm")  # fmt: skip
    for w in res["windows"]:
        iv = w.get("far_interval")
        far = "-" if w.get("far") is None else f"{w['far']:.3e}"
        lo = "-" if not iv else f"{iv['lo']:.3e}"
        p1, p2 = w.get("top1", {}).get("ks_p"), w.get("tail", {}).get("ks_p")
        alarm = ("FAR " if w["far_alarm"] else "") + ("drift" if w["drift_alarm"] else "")
        _out(
            f"{w['window']:>6} {w['start']:>6}-{w['stop']:<6} {far:>10} {lo:>10} "
            f"{w['acceptance_rate']:>10.3e} {'-' if p1 is None else f'{p1:.2e}':>9} "
            f"{'-' if p2 is None else f'{p2:.2e}':>9}  {alarm}"
        )
    _out(f"bound: {res['bound']}")
    for path in (args.json, args.report and str(Path(args.report) / "monitor.html")):
        if path:
            _out(f"wrote {console_text(path)}")
    if res["alarm"]:
        _out("ALARM: the deployed threshold no longer holds its FAR on this data (see above)")
        return EXIT_ALARM
    return 0


def check_monitor_args(args: argparse.Namespace) -> None:
    """Option checks of ``tcm monitor`` (before loading)."""
    from tcm.cli.main import _check_at_least, _check_fraction, _check_output_dir

    _check_at_least(args.window, "--window", 2)
    if not (args.k > 0 and math.isfinite(args.k)):
        raise ValueError(f"--k must be a number > 0; got {args.k}")
    _check_fraction(args.drift_alpha, "--drift-alpha")
    _check_fraction(args.level, "--ci")
    _check_at_least(args.resamples, "--n-boot", 1)
    if args.report:
        _check_output_dir(args.report, "--report")


# ----------------------------------------------------------------------------- parsers


def add_parsers(sub: Any) -> None:
    """Register ``match`` and ``monitor``."""
    m = sub.add_parser("match", help="1:N matching of queries against a gallery at a threshold")
    m.add_argument("--threshold", required=True, metavar="THRESHOLD.json", help="the contract")
    m.add_argument("--gallery", required=True, metavar="G", help="gallery embeddings file")
    m.add_argument("--queries", required=True, metavar="Q", help="query embeddings file")
    m.add_argument("--out", required=True, metavar="MATCHES.csv", help="output CSV")
    m.add_argument("--top-k", type=int, metavar="K", help="at most K matches >= t per query")
    m.add_argument(
        "--best", action="store_true", help="the best gallery item of every query + decision"
    )
    m.add_argument(
        "--index",
        choices=INDEX_KINDS,
        default="exact",
        help="exact blocked matching (default) or a faiss IVF / HNSW index",
    )
    m.add_argument(
        "--min-recall",
        type=float,
        metavar="R",
        help="with --index: refuse an index whose measured range recall is below R (default 0.99)",
    )
    m.add_argument(
        "--recall-sample",
        type=int,
        metavar="N",
        help="with --index: queries matched exactly to measure the recall (default 200)",
    )
    _add_scorer_file(m)
    m.set_defaults(func=_cmd_match)

    o = sub.add_parser("monitor", help="FAR drift of a deployed threshold on new data")
    o.add_argument("new", metavar="NEW", help="new embeddings file (rows in time order)")
    o.add_argument("--threshold", required=True, metavar="THRESHOLD.json", help="the contract")
    o.add_argument(
        "--labels", action="store_true", help="use NEW's labels: FAR / TAR and the FAR alarm"
    )
    o.add_argument("--window", type=int, metavar="N", help="samples per window (default: all)")
    o.add_argument(
        "--k", type=float, default=2.0, help="FAR alarm above k x target FAR (default 2)"
    )
    o.add_argument(
        "--drift-alpha",
        type=float,
        default=0.01,
        metavar="A",
        help="family-wise level of the drift tests (default 0.01)",
    )
    o.add_argument("--gallery", metavar="G", help="labelled gallery: share of ambiguous matches")
    o.add_argument(
        "--ci",
        dest="level",
        type=float,
        default=0.95,
        metavar="LEVEL",
        help="interval level in (0, 1) (default 0.95)",
    )
    o.add_argument(
        "--n-boot",
        dest="resamples",
        type=int,
        default=1000,
        metavar="N",
        help="class-bootstrap resamples (default 1000)",
    )
    o.add_argument("--json", metavar="OUT.json", help="also write the result as JSON")
    o.add_argument("--report", metavar="DIR", help="write DIR/monitor.html with the drift plot")
    _add_scorer_file(o)
    o.set_defaults(func=_cmd_monitor)


def _add_scorer_file(p: argparse.ArgumentParser) -> None:
    """``--scorer-file`` of ``tcm match`` / ``tcm monitor`` (the contract's scorer, moved)."""
    p.add_argument(
        "--scorer-file",
        dest="scorer_path",
        metavar="S.safetensors",
        help="a contract on a scorer's scale: read its scorer from here instead of the file the "
        "contract names (verified by its SHA-256)",
    )
