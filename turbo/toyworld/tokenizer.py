"""The ToyWorld caption tokenizer, built in-process (no hub): one id per word of the caption grammar.

`caption_tokenizer()` is a word-level `PreTrainedTokenizerFast` (`tokenizers` WordLevel model, lowercase normaliser,
whitespace/punctuation pre-tokenizer, `$A </s>` post-processor) whose vocabulary is exactly the words that
`turbo.toyworld.videos.caption` can produce plus the vocabularies of `videos.py` (shapes, colours, backgrounds, motion
phrases): ids ``<pad>``=0, ``</s>``=1, ``<unk>``=2, then ``,`` and ``.``, then the words in a fixed order. The same
tokenizer serves the UMT5 slot of the Wan pipelines and both the Llama and CLIP slots of the HunyuanVideo pipeline.
It round-trips through ``save_pretrained`` / ``from_pretrained`` (``tokenizer.json`` carries the normaliser).

A word outside the vocabulary becomes ``<unk>``; the tokenizer itself stays silent (the diffusers pipelines call it
directly), so use `encode_prompts` (or `unknown_words`) to get a ``warnings.warn`` naming the unknown words.
"""

from __future__ import annotations

import re
import warnings

import torch

from turbo.toyworld import videos

__all__ = ["PAD_ID", "EOS_ID", "UNK_ID", "caption_tokenizer", "caption_vocabulary", "encode_prompts", "unknown_words"]

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
_SPECIAL = ("<pad>", "</s>", "<unk>")
_PUNCTUATION = (",", ".")
_GRAMMAR = ("a", "and", "on", "background")  # the fixed words of `videos.caption`
_WORD = re.compile(r"\w+|[^\w\s]+")  # what the Whitespace pre-tokenizer splits into


def caption_vocabulary() -> list[str]:
    """The words of the caption grammar, deduplicated, in a fixed order (ids 5, 6, ... of the tokenizer)."""
    words: dict[str, None] = {}
    for group in (
        _GRAMMAR,
        videos.SHAPES,
        tuple(videos.COLOURS),
        tuple(videos.BACKGROUNDS),
        videos.MOTIONS,
        tuple(w for phrase in videos.MOTION_PHRASES.values() for w in phrase.split()),
    ):
        for word in group:
            words.setdefault(word.lower(), None)
    return list(words)


def caption_tokenizer():
    """Word-level tokenizer over `caption_vocabulary` (pad=0, eos=1, unk=2; lowercases; appends ``</s>``)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate((*_SPECIAL, *_PUNCTUATION, *caption_vocabulary()))}
    backend = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS_ID)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )
    return tok


def unknown_words(tokenizer, prompt: str) -> list[str]:
    """The words of `prompt` (lowercased, split like the tokenizer does) that the tokenizer maps to ``<unk>``."""
    vocab = tokenizer.get_vocab()
    return [w for w in _WORD.findall(str(prompt).lower()) if w not in vocab]


def encode_prompts(tokenizer, prompts, max_length: int, warn: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [N, max_length], padded and truncated like the diffusers pipelines do.

    Unknown words become ``<unk>`` (id 2) and, with `warn`, one ``warnings.warn`` per prompt names them.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if warn:
        for prompt in prompts:
            unknown = unknown_words(tokenizer, prompt)
            if unknown:
                warnings.warn(
                    f"prompt {prompt!r}: words not in the ToyWorld vocabulary, encoded as <unk>: {', '.join(unknown)}",
                    stacklevel=2,
                )
    enc = tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    return enc.input_ids, enc.attention_mask
