"""customer_ltv fit time on simulated customers: the model's path vs plain lifetimes.

Simulates N customers (x, t_x, T in whole days, zbar) from BG/NBD + Gamma-Gamma (the CDNOW
estimates; T_days uniform on --min-T-days..--max-T-days, default a year of steady acquisition;
189..273 is a CDNOW-like 12-week cohort), then times, median of --repeats:

* compress            - grouping identical (x, t_x, T) rows into weights (training.ltv.compress);
* compressed fit cold - compress + lifetimes' BetaGeoFitter on the distinct patterns with
                        weights, from lifetimes' default start (the model's path before warm starts);
* model BG/NBD part   - what CustomerLtvModel.fit spends on BG/NBD: validation, compress, a
                        fit on a ~10,000-customer sample, then lifetimes' BetaGeoFitter on all
                        patterns warm-started from it (WARM_START_* in training.ltv), the checks;
* model fit           - CustomerLtvModel.fit: the above + the Gamma-Gamma fit (repeat buyers'
                        distinct (x, zbar), warm-started the same way);
* plain fit           - lifetimes' BetaGeoFitter on every customer row from its default start.

The parameter column is the largest relative difference from the plain fit's (r, alpha, a, b)
(the compressed fit cold instead with --skip-plain). Each lifetimes fit includes its Hessian
for the standard errors. Check `uptime` first: figures are only comparable on a quiet machine;
the "vs plain" column is a ratio within one run.

    .venv/bin/python benchmarks/bench_ltv_fit.py [--customers 1000000] [--repeats 3] [--min-T-days 0 --max-T-days 365]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from training.ltv import BgNbdParams, CustomerLtvModel, _prepare, compress, simulate_bgnbd

WEEK = 7.0


def _timed(function: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return times, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-T-days", type=int, default=0, help="T_days is uniform on min..max (the acquisition window)")
    parser.add_argument("--max-T-days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-plain", action="store_true", help="skip the slow uncompressed fit")
    args = parser.parse_args(argv)

    from lifetimes import BetaGeoFitter

    warnings.simplefilter("ignore")  # lifetimes' deprecation noise; this is a script, not a library
    features = simulate_bgnbd(
        args.customers, min_T_days=args.min_T_days, max_T_days=args.max_T_days, seed=args.seed
    )
    x = features["frequency"].to_numpy()
    t_x = features["recency_days"].to_numpy()
    T = features["T_days"].to_numpy()

    def compressed_fit() -> Any:
        (px, ptx, pT), counts, _ = compress(x, t_x, T)
        return BetaGeoFitter().fit(px, ptx / WEEK, pT / WEEK, weights=counts)

    rows: list[tuple[str, int, list[float], np.ndarray]] = []
    compress_times, (_, counts, _) = _timed(lambda: compress(x, t_x, T), args.repeats)
    rows.append(("compress", args.customers, compress_times, np.full(4, np.nan)))
    fit_times, fitter = _timed(compressed_fit, args.repeats)
    rows.append(("compressed fit cold", len(counts), fit_times, fitter.params_.to_numpy()))

    def model_bgnbd_part() -> Any:  # the first half of CustomerLtvModel.fit (private on purpose)
        out, _, _, _ = CustomerLtvModel()._fit_bgnbd(_prepare(features), [])
        return np.array([out.params[k] for k in BgNbdParams._fields])

    bgnbd_times, bgnbd_params = _timed(model_bgnbd_part, args.repeats)
    rows.append(("model BG/NBD part", len(counts), bgnbd_times, bgnbd_params))
    model_times, model = _timed(lambda: CustomerLtvModel().fit(features), args.repeats)
    rows.append(("model fit (BG/NBD + GG)", len(counts), model_times, np.array(model.bgnbd_params_)))
    if not args.skip_plain:
        plain_times, plain = _timed(lambda: BetaGeoFitter().fit(x, t_x / WEEK, T / WEEK), args.repeats)
        rows.append(("plain fit", args.customers, plain_times, plain.params_.to_numpy()))
        reference = plain.params_.to_numpy()
        plain_median = statistics.median(plain_times)
    else:
        reference, plain_median = fitter.params_.to_numpy(), float("nan")

    repeat_share = float((x > 0).mean())
    print(
        f"{args.customers:,} customers (T uniform on {args.min_T_days}..{args.max_T_days} days, "
        f"{repeat_share:.0%} repeat buyers), "
        f"{len(counts):,} distinct (x, t_x, T); median of {args.repeats}"
    )
    header = f"{'method':<26}{'rows fitted':>13}{'median s':>10}{'min s':>8}{'vs plain':>10}{'max rel diff':>14}"
    print(header)
    print("-" * len(header))
    for name, n_rows, times, params in rows:
        median = statistics.median(times)
        speed_up = f"{plain_median / median:.1f}x" if np.isfinite(plain_median) else "-"
        diff = np.max(np.abs(params / reference - 1)) if np.isfinite(params).all() else np.nan
        diff_text = f"{diff:.1e}" if np.isfinite(diff) else "-"
        print(f"{name:<26}{n_rows:>13,}{median:>10.2f}{min(times):>8.2f}{speed_up:>10}{diff_text:>14}")
    r, alpha, a, b = model.bgnbd_params_
    p, q, v = model.gg_params_
    print(f"model: r={r:.4f} alpha={alpha:.3f} a={a:.4f} b={b:.4f} (simulated 0.243, 4.414, 0.793, 2.426)")
    accepted = [f"{a.model} {'warm' if a.warm_start else 'cold'}" for a in model.fit_attempts_ if a.converged]
    print(
        f"       p={p:.3f} q={q:.3f} v={v:.2f} (simulated 6.25, 3.74, 15.44) on {model.n_gg_patterns_:,} "
        f"distinct (x, zbar); accepted: {', '.join(accepted)} (of {len(model.fit_attempts_)} attempts)"
    )


if __name__ == "__main__":
    main()
