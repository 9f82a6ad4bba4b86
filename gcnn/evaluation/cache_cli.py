"""evaluate.py perplexity with the continuous cache: its flags checked, the run, its report."""

from __future__ import annotations

import json
import sys

from gcnn.errors import GcnnError


def cache_requested(args) -> bool:
    """Whether any --cache-* flag or --tune-cache was given."""
    return args.tune_cache or _cache_flags(args)


def _cache_flags(args) -> bool:
    return any(v is not None for v in (args.cache_size, args.cache_theta, args.cache_lambda))


def check_cache_flags(args) -> None:
    """Bad cache settings fail before the checkpoint is read, one line each."""
    from gcnn.evaluation.continuous_cache import check_lambda, check_size, check_theta

    for flag, values, check in (
        ("--cache-size", args.cache_size, check_size),
        ("--cache-theta", args.cache_theta, check_theta),
        ("--cache-lambda", args.cache_lambda, check_lambda),
    ):
        for value in values or ():
            check(value)
        if values is not None and len(values) > 1 and not args.tune_cache:
            raise GcnnError(f"{flag}: one value, or several with --tune-cache to choose one")
    missing = args.cache_theta is None or args.cache_lambda is None
    if _cache_flags(args) and not args.tune_cache and missing:
        raise GcnnError(
            "the cache needs --cache-theta and --cache-lambda, "
            "or --tune-cache to choose them on the validation split"
        )


def _cache_split(args, tokenizer, directory, files, name: str):
    from gcnn.evaluation.perplexity import check_vocabulary, tokenize_split

    if name not in files:
        found = ", ".join(files) or "none"
        raise GcnnError(f"{directory} has no {name} split (found: {found}); the cache needs it")
    split = tokenize_split(tokenizer, files[name])
    if len(split.tokens) == 0:
        raise GcnnError(f"split file {files[name]} is empty; nothing to evaluate")
    if not args.allow_oov:
        check_vocabulary(split, files[name], args.checkpoint)
    if split.oov:
        print(f"warning: {split.oov} unknown words in {name} scored as <unk>", file=sys.stderr)
    return split


def _print_cache_result(label: str, result) -> None:
    with_cache, without = result.cache, result.no_cache
    change = 100 * (with_cache.perplexity / without.perplexity - 1)
    print(
        f"{label}: {with_cache.tokens:,} tokens   perplexity {without.perplexity:.2f} without "
        f"the cache, {with_cache.perplexity:.2f} with it ({change:+.1f}%)"
    )
    if with_cache.word_perplexity is not None:
        print(
            f"{label}: per-word perplexity {without.word_perplexity:.2f} without, "
            f"{with_cache.word_perplexity:.2f} with the cache"
        )


def perplexity_with_cache(args, model, tokenizer, directory, files, device) -> int:
    """--cache-*: perplexity with the continuous cache; --tune-cache: choose it on valid first."""
    from gcnn.evaluation import cache_evaluation as ce
    from gcnn.evaluation.continuous_cache import DEFAULT_SIZE, CacheConfig

    options = dict(block_size=args.block_size, batch_size=args.batch_size, device=device)
    if args.tune_cache:
        valid = _cache_split(args, tokenizer, directory, files, "valid")
        tuned = ce.tune_cache(
            model,
            tokenizer,
            valid.tokens,
            sizes=args.cache_size or [DEFAULT_SIZE],
            thetas=args.cache_theta or ce.DEFAULT_THETAS,
            lambdas=args.cache_lambda or ce.DEFAULT_LAMBDAS,
            words=valid.words,
            **options,
        )
        config, valid_result = tuned.config, tuned.valid
        split_name = "test"
    else:
        config = CacheConfig(
            args.cache_size[0] if args.cache_size else DEFAULT_SIZE,
            args.cache_theta[0],
            args.cache_lambda[0],
        )
        valid_result, split_name = None, args.split
    split = _cache_split(args, tokenizer, directory, files, split_name)
    result = ce.evaluate_with_cache(
        model, tokenizer, split.tokens, config, words=split.words, **options
    )
    if args.json:
        if valid_result is None:
            print(json.dumps(result.to_json()))
        else:
            # valid's time is the whole grid's pass, not the cost of one setting: left out
            valid_json = valid_result.to_json()
            test_json = result.to_json()
            for key in ("cache", "tokens_per_s"):
                valid_json.pop(key)
            test_json.pop("cache")
            out = {"cache": config.to_json(), "grid": tuned.grid_json()}
            out["valid_mean_sq_norm"] = tuned.mean_sq_norm
            out["valid_best_by_size"] = tuned.best_by_size()
            print(json.dumps({**out, "valid": valid_json, "test": test_json}))
        return 0
    settings = f"size {config.size}, theta {config.theta:g}, lambda {config.lam:g}"
    if valid_result is not None:
        grid = (
            f"{len(tuned.sizes)} sizes x {len(tuned.thetas)} thetas x {len(tuned.lambdas)} lambdas"
        )
        print(f"continuous cache tuned on {directory.name} valid ({grid}): {settings}")
        print(f"valid: mean squared norm of the hidden states {tuned.mean_sq_norm:.1f}")
        if len(tuned.sizes) > 1:
            for row in tuned.best_by_size():
                print(
                    f"valid: size {row['size']}: perplexity {row['perplexity']:.2f} "
                    f"(theta {row['theta']:g}, lambda {row['lambda']:g})"
                )
        _print_cache_result("valid", valid_result)
    else:
        print(f"continuous cache: {settings}")
    _print_cache_result(split_name, result)
    print(
        f"{split_name}: {result.cache.tokens_per_s:,.0f} tokens/s with the cache "
        f"({result.cache.seconds:.1f} s)"
    )
    return 0


def add_cache_flags(parser) -> None:
    """The perplexity subcommand's --cache-* and --tune-cache flags."""
    cache = parser.add_argument_group(
        "continuous cache (Grave et al. 2017; off unless one of these is given)"
    )
    cache.add_argument(
        "--cache-size", type=int, nargs="+", metavar="N", help="cached positions (default 2000)"
    )
    cache.add_argument("--cache-theta", type=float, nargs="+", metavar="THETA")
    cache.add_argument("--cache-lambda", type=float, nargs="+", metavar="LAMBDA")
    cache.add_argument(
        "--tune-cache",
        action="store_true",
        help="choose size/theta/lambda on valid over a grid (the values given, or a default "
        "grid), then report valid and test",
    )
