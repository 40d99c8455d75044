"""The simulator's prefix cache (pure): which prompt blocks a replica has computed, and what a prompt hits.

As vLLM V1's automatic prefix caching, simplified:

- a prompt is cut into **blocks** of ``BLOCK_TOKENS`` tokens (vLLM's default ``--block-size`` on GPUs,
  16); only full blocks are cached, a partial last block never is;
- each block is named by a **hash chain**: the hash of the previous block's hash and this block's
  tokens, so a block's name says "these tokens, after exactly that prefix". A prompt's hit is its
  longest run of leading blocks that are all cached: a block whose predecessor is not cached is not
  a hit, even when its own tokens are;
- at least the prompt's last token is always computed (vLLM caps the hit at ``prompt tokens - 1``,
  since the last position's logits are needed), so a hit is at most the full blocks before it;
- the cache holds at most ``capacity_blocks`` blocks (the replica's KV cache, in blocks) and evicts
  the least recently used. A request's blocks are used when it is scheduled, so a running
  request's blocks are the most recent and go last. (vLLM pins running requests' blocks and keeps
  blocks shared by running requests once; the simulator's KV accounting charges every running
  request its whole context, so the cache is a little optimistic about room and the KV a little
  pessimistic: both simple and both stated.)
- with CPU offloading (vLLM's ``--kv-offloading-size`` GiB, ``--kv-offloading-backend native``),
  every computed block is also stored in a second LRU of ``offload_blocks`` blocks in host memory;
  a leading block found only there is a hit too, but it is copied back to the GPU instead of
  computed: the engine charges its transfer time (``OFFLOAD_BYTES_PER_S``), not its prefill.

**Tokens from text.** The simulator's tokenizer is ``CHARS_PER_TOKEN`` (4) characters a token
(``quality.count_tokens``), so a block is ``BLOCK_CHARS`` (64) consecutive characters of the prompt
as the engine sees it: a completion's prompt string, or a chat rendered by ``render_chat``. A
prompt of token ids is cut into runs of ``BLOCK_TOKENS`` ids.

The counters are vLLM's ``vllm:prefix_cache_queries`` and ``vllm:prefix_cache_hits``, in tokens:
each scheduled request adds its prompt tokens to the queries and its cached tokens to the hits.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

from modelplane_dev.sim.quality import CHARS_PER_TOKEN

#: Tokens per block: vLLM's default ``--block-size`` (16 on CUDA), the granularity of its prefix cache.
BLOCK_TOKENS = 16
#: Characters per block, by the simulator's tokenizer.
BLOCK_CHARS = BLOCK_TOKENS * CHARS_PER_TOKEN

#: Host-to-GPU copy rate of offloaded KV blocks: about what PCIe 4.0 x16 moves in practice.
OFFLOAD_BYTES_PER_S = 25e9

BlockHash = bytes


def _chain(previous: BlockHash, content: bytes) -> BlockHash:
    return hashlib.blake2b(previous + content, digest_size=12).digest()


def text_block_hashes(text: str) -> list[BlockHash]:
    """The hash chain of the full ``BLOCK_CHARS``-character blocks of ``text``."""
    hashes: list[BlockHash] = []
    previous = b""
    for start in range(0, len(text) - BLOCK_CHARS + 1, BLOCK_CHARS):
        previous = _chain(previous, text[start:start + BLOCK_CHARS].encode())
        hashes.append(previous)
    return hashes


def token_block_hashes(tokens: Sequence[int]) -> list[BlockHash]:
    """The hash chain of the full ``BLOCK_TOKENS``-token blocks of a prompt given as token ids."""
    hashes: list[BlockHash] = []
    previous = b""
    for start in range(0, len(tokens) - BLOCK_TOKENS + 1, BLOCK_TOKENS):
        block = ",".join(str(t) for t in tokens[start:start + BLOCK_TOKENS])
        previous = _chain(previous, b"ids:" + block.encode())
        hashes.append(previous)
    return hashes


def hittable_blocks(blocks: Sequence[BlockHash], prompt_tokens: int) -> int:
    """How many of a prompt's leading blocks may be hits: the ones before its last token."""
    return max(0, min(len(blocks), (prompt_tokens - 1) // BLOCK_TOKENS))


class PrefixCache:
    """One replica's cached blocks, least recently used first. ``capacity_blocks`` 0: caching off.

    ``offload_blocks``: the host-memory tier's room (0: no offloading).
    """

    def __init__(self, capacity_blocks: int, offload_blocks: int = 0) -> None:
        if capacity_blocks < 0 or offload_blocks < 0:
            raise ValueError(f"capacity_blocks and offload_blocks must be >= 0, got {capacity_blocks}, "
                             f"{offload_blocks}")
        self.capacity_blocks = capacity_blocks
        self.offload_blocks = offload_blocks if capacity_blocks else 0
        self._blocks: OrderedDict[BlockHash, None] = OrderedDict()
        self._offloaded: OrderedDict[BlockHash, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, block: object) -> bool:
        return block in self._blocks

    def hit_blocks(self, blocks: Sequence[BlockHash], prompt_tokens: int,
                   also: frozenset[BlockHash] | set[BlockHash] = frozenset()) -> int:
        """Leading blocks of a prompt that are cached (or in ``also``: being computed in the same step)."""
        return sum(self.hit_split(blocks, prompt_tokens, also))

    def hit_split(self, blocks: Sequence[BlockHash], prompt_tokens: int,
                  also: frozenset[BlockHash] | set[BlockHash] = frozenset()) -> tuple[int, int]:
        """Leading cached blocks of a prompt: (on the GPU or in ``also``, only in the host-memory tier)."""
        if self.capacity_blocks == 0:
            return 0, 0
        on_gpu = offloaded = 0
        for block in blocks[:hittable_blocks(blocks, prompt_tokens)]:
            if block in self._blocks or block in also:
                on_gpu += 1
            elif block in self._offloaded:
                offloaded += 1
            else:
                break
        return on_gpu, offloaded

    def hit_tokens(self, blocks: Sequence[BlockHash], prompt_tokens: int) -> int:
        return self.hit_blocks(blocks, prompt_tokens) * BLOCK_TOKENS

    def use(self, blocks: Sequence[BlockHash]) -> None:
        """A request computed (or reused) ``blocks``: they become the most recent; the oldest go."""
        if self.capacity_blocks == 0:
            return
        for tier, room in ((self._blocks, self.capacity_blocks), (self._offloaded, self.offload_blocks)):
            if room == 0:
                continue
            for block in blocks:
                tier[block] = None
                tier.move_to_end(block)
            while len(tier) > room:
                tier.popitem(last=False)
