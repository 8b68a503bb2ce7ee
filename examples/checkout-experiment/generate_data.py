#!/usr/bin/env python3
"""Writes the example experiment's data (deterministic; standard library only).

A checkout redesign tested on 8,000 users over three weeks: the treatment lifts
purchase probability and basket size a little. Run it again to regenerate data/.
"""
import csv
import gzip
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

SEED = 20261101
USERS = 8000
START = datetime(2026, 10, 1, tzinfo=timezone.utc)
EXPERIMENT_START = datetime(2026, 10, 15, tzinfo=timezone.utc)
EXPERIMENT_END = datetime(2026, 11, 5, tzinfo=timezone.utc)
COUNTRIES = ["US", "DE", "GB", "SE", "JP", "BR"]
PLATFORMS = ["web", "ios", "android"]

rng = random.Random(SEED)
out = Path(__file__).parent / "data"
out.mkdir(exist_ok=True)


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def write(name, header, rows):
    with gzip.open(out / name, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


users, exposures, purchases, sessions = [], [], [], []
for i in range(USERS):
    user = f"u{i:05d}"
    country = rng.choice(COUNTRIES) if rng.random() > 0.03 else ""
    platform = rng.choice(PLATFORMS)
    if rng.random() > 0.02:
        users.append((user, country, platform))
    propensity = rng.lognormvariate(0, 0.6)
    # Exposure: 85% of users see the checkout during the experiment.
    if rng.random() < 0.85:
        variant = "treatment" if rng.random() < 0.5 else "control"
        first = EXPERIMENT_START + timedelta(seconds=rng.uniform(0, 14 * 86400))
        exposures.append((user, iso(first), variant, platform))
        for _ in range(rng.randint(0, 3)):
            seen = first + timedelta(hours=rng.uniform(0, 120))
            if seen < EXPERIMENT_END:
                exposures.append((user, iso(seen), variant, platform))
        if rng.random() < 0.01:  # a logging bug exposes a few users to both variants
            other = "control" if variant == "treatment" else "treatment"
            exposures.append((user, iso(first + timedelta(hours=2)), other, platform))
        lift = 1.08 if variant == "treatment" else 1.0
    else:
        first, lift = None, 1.0
    # Sessions and purchases from two weeks before the experiment to its end.
    t = START
    while True:
        t += timedelta(hours=rng.expovariate(propensity / 120))
        if t >= EXPERIMENT_END:
            break
        sessions.append((user, iso(t), int(rng.lognormvariate(5.5, 0.8))))
        in_experiment = first is not None and t >= first
        if rng.random() < 0.25 * (lift if in_experiment else 1.0):
            items = 1 + int(rng.expovariate(0.6))
            amount = round(items * rng.lognormvariate(3.0, 0.5) * (lift if in_experiment else 1.0), 2)
            # A few purchase events arrive without an amount.
            purchases.append((user, iso(t + timedelta(minutes=5)), "" if rng.random() < 0.005 else amount, items))

rng.shuffle(exposures)
write("users.csv.gz", ["user_id", "country", "platform"], users)
write("exposures.csv.gz", ["user_id", "ts", "variant", "platform"], exposures)
write("purchases.csv.gz", ["user_id", "ts", "amount", "items"], purchases)
write("sessions.csv.gz", ["user_id", "ts", "duration_s"], sessions)
print(f"{len(users)} users, {len(exposures)} exposures, {len(purchases)} purchases, {len(sessions)} sessions")
