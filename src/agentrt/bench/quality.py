"""What a lossy engine setting (quantized weights, a narrower dtype) costs in output quality.

Measured against a float32, unquantized engine on the same model, in the
same process:

- **greedy agreement**: 20 fixed chat prompts, 32 greedy tokens each from
  the reference; the share of those tokens the engine under test also ranks
  first when fed the reference's own context (teacher-forced, so one early
  difference does not decide every later position), and the share of
  positions where its own free-running greedy output is the same token;
- **perplexity** of a fixed English text (a public-domain passage) under
  both, and their ratio.

The texts are fed in decode-sized chunks (see ``agentrt.engine.scoring``),
so quantized weights are measured through the kernels decode steps use.
"""

from __future__ import annotations

from typing import Any

import msgspec

from agentrt.protocol.engine import SamplingParams

PROMPTS = (
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "Explain what a binary search does.",
    "Write a haiku about the sea.",
    "How many days are there in a leap year?",
    "What is photosynthesis?",
    "Translate 'good morning' into Spanish.",
    "Name the planets of the solar system.",
    "Why is the sky blue?",
    "Write a Python function that reverses a string.",
    "What does HTTP stand for?",
    "Summarise the plot of Romeo and Juliet in two sentences.",
    "What is the boiling point of water at sea level?",
    "Suggest a name for a small coffee shop.",
    "How do vaccines work?",
    "What is the difference between weather and climate?",
    "List three uses of a paperclip.",
    "Who wrote Pride and Prejudice?",
    "What is 12 times 12?",
    "Describe a cat to someone who has never seen one.",
)
NEW_TOKENS = 32

# Charles Dickens, "A Tale of Two Cities" (1859), the opening paragraphs; public domain.
TEXT = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was "
    "the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it "
    "was the season of Light, it was the season of Darkness, it was the spring of hope, it was "
    "the winter of despair, we had everything before us, we had nothing before us, we were all "
    "going direct to Heaven, we were all going direct the other way - in short, the period was "
    "so far like the present period, that some of its noisiest authorities insisted on its "
    "being received, for good or for evil, in the superlative degree of comparison only.\n\n"
    "There were a king with a large jaw and a queen with a plain face, on the throne of "
    "England; there were a king with a large jaw and a queen with a fair face, on the throne "
    "of France. In both countries it was clearer than crystal to the lords of the State "
    "preserves of loaves and fishes, that things in general were settled for ever.\n\n"
    "It was the year of Our Lord one thousand seven hundred and seventy-five. Spiritual "
    "revelations were conceded to England at that favoured period, as at this. Mrs. Southcott "
    "had recently attained her five-and-twentieth blessed birthday, of whom a prophetic "
    "private in the Life Guards had heralded the sublime appearance by announcing that "
    "arrangements were made for the swallowing up of London and Westminster. Even the "
    "Cock-lane ghost had been laid only a round dozen of years, after rapping out its "
    "messages, as the spirits of this very year last past (supernaturally deficient in "
    "originality) rapped out theirs."
)


class Quality(msgspec.Struct, kw_only=True):
    setting: str  # what was measured, e.g. "bfloat16, int4 weights"
    prompts: int
    tokens: int  # reference tokens compared
    teacher_forced_agreement: float  # share of reference tokens also ranked first
    free_running_agreement: float  # share of positions with the same greedy token
    text_tokens: int
    perplexity: float
    reference_perplexity: float  # float32, unquantized
    perplexity_ratio: float


def prompt_ids(tokenizer: Any, question: str) -> list[int]:
    """The question as a one-turn chat when the tokenizer has a template, else as plain text."""
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": question}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(question))


def measure(engine: Any, reference: Any, tokenizer: Any, setting: str) -> Quality:
    """Compare idle ``engine`` with idle float32 ``reference`` on the fixed prompts and text."""
    from agentrt.engine.scoring import perplexity, token_logits

    greedy = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    prompts = [prompt_ids(tokenizer, q) for q in PROMPTS]
    wanted = [o[0] for o in reference.generate(prompts, greedy)]
    produced = [o[0] for o in engine.generate(prompts, greedy)]
    forced = same = total = 0
    for prompt, want, got in zip(prompts, wanted, produced, strict=True):
        logits = token_logits(engine, prompt + want[:-1])
        ranked_first = logits[len(prompt) - 1 :].argmax(dim=-1).tolist()
        forced += sum(a == b for a, b in zip(ranked_first, want, strict=True))
        same += sum(a == b for a, b in zip(got, want, strict=False))
        total += len(want)
    text = list(tokenizer.encode(TEXT))
    ppl = perplexity(token_logits(engine, text), text)
    reference_ppl = perplexity(token_logits(reference, text), text)
    return Quality(
        setting=setting,
        prompts=len(prompts),
        tokens=total,
        teacher_forced_agreement=forced / total,
        free_running_agreement=same / total,
        text_tokens=len(text),
        perplexity=ppl,
        reference_perplexity=reference_ppl,
        perplexity_ratio=ppl / reference_ppl,
    )
