"""Shared settings of the property-based fuzz suites (hypothesis).

Profiles (`PIXELREFER_FUZZ_PROFILE`):

- `ci` (default): `PIXELREFER_FUZZ_EXAMPLES` examples per test (default 20), no deadline (the
  Triton interpreter's first call compiles), no example database (nothing written to the checkout),
  the reproduction blob printed with a failure;
- `long`: 500 examples per test, for a local soak run.

Seed: `PIXELREFER_FUZZ_SEED` (default: random). Tests without their own `@seed` get this one; the
seed, profile and example count are printed at the start of the run, and hypothesis' statistics
(examples run per test) at the end, so a failing run can be replayed with the same seed. A failure
prints the minimal (shrunk) example.
"""

from __future__ import annotations

import os
import random

import hypothesis
import pytest
from hypothesis import HealthCheck, settings

SEED = int(os.environ.get("PIXELREFER_FUZZ_SEED", random.SystemRandom().randrange(2**32)))
PROFILE = os.environ.get("PIXELREFER_FUZZ_PROFILE", "ci")

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("PIXELREFER_FUZZ_EXAMPLES", "20")),
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,  # the suite-wide seed and NaN-poisoning fixtures hold for every example
    ],
)
settings.register_profile("long", parent=settings.get_profile("ci"), max_examples=500)
settings.load_profile(PROFILE)

_FUZZ_DIR = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    fuzz = [item for item in items if str(item.fspath).startswith(_FUZZ_DIR)]
    if not fuzz:
        return
    for item in fuzz:
        test = getattr(item, "obj", None)
        if test is not None and getattr(test, "is_hypothesis_test", False) and getattr(test, "_hypothesis_internal_use_seed", None) is None:
            hypothesis.seed(SEED)(test)
    # the per-test example counts, printed with the run's summary
    config.option.hypothesis_show_statistics = True
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"fuzz: seed {SEED} (PIXELREFER_FUZZ_SEED), profile {PROFILE!r} (PIXELREFER_FUZZ_PROFILE), "
            f"{settings.default.max_examples} examples per test unless a test sets its own"
        )


@pytest.fixture(autouse=True)
def _fuzz_seed_in_report(record_property):
    record_property("fuzz_seed", SEED)
