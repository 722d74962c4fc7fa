"""A seeded request samples the same tokens whatever else shares its batch."""

from __future__ import annotations

from tests.unit.engine.helpers import random_prompts, tiny_engine

from agentrt.protocol.engine import SamplingParams


def test_seeded_sampling_ignores_batch_mates() -> None:
    [prompt] = random_prompts([15], seed=31)
    seeded = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=1234, max_tokens=16)
    alone = tiny_engine().generate([prompt], seeded)[0][0]
    mates = random_prompts([3, 40, 22], seed=32)
    crowd = tiny_engine(max_num_batched_tokens=16).generate(
        [mates[0], prompt, mates[1], mates[2]],
        [
            SamplingParams(temperature=1.0, max_tokens=20),
            seeded,
            SamplingParams(temperature=0.0, max_tokens=5),
            SamplingParams(temperature=0.7, seed=9, max_tokens=30),
        ],
    )
    assert crowd[1][0] == alone
    other_seed = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=4321, max_tokens=16)
    assert tiny_engine().generate([prompt], other_seed)[0][0] != alone


def test_seeded_sampling_survives_preemption() -> None:
    prompts = random_prompts([30, 22, 27, 9], seed=33)
    params = SamplingParams(temperature=1.0, seed=77, max_tokens=24)
    roomy = tiny_engine().generate(prompts, params)
    tight = tiny_engine(num_kv_blocks=20)
    assert tight.generate(prompts, params) == roomy
    assert tight.stats().preemptions_swap + tight.stats().preemptions_recompute > 0
