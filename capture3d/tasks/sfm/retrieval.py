"""Image retrieval for SfM pairing: a bag of visual words learnt from the capture's own SIFT.

COLMAP's vocabulary-tree matcher needs a pretrained tree file; this module needs none. A visual
vocabulary (a two-level vocabulary tree: seeded mini-batch k-means of the top words, then of each
top word's members) is learnt from a sample of the capture's RootSIFT descriptors, every image
becomes a tf-idf weighted histogram of its words (square-rooted term frequencies against
burstiness, L2-normalised), and each image is paired with the ``top_k`` images of highest cosine
similarity. When the file names are a numeric sequence (video frames:
``frame_0001.jpg``, ``0002.png``, ...) each frame is also paired with its ``sequential_overlap``
successors.

Inputs: a COLMAP database holding the images' SIFT descriptors (after feature extraction) and a
:class:`RetrievalConfig`. Outputs: :class:`RetrievalPairs` (image-name pairs, each once, the
smaller name first) and :func:`write_pairs`, the text file ``pycolmap.match_image_pairs`` reads.
Pure numpy; nothing is written except by :func:`write_pairs`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

logger = logging.getLogger(__name__)

_FRAME_NUMBER = re.compile(r"^(.*?)(\d+)\.[^.]+$")  # prefix, frame number, extension
_ASSIGN_CHUNK = 8192  # descriptors assigned to words per matrix product
_WORDS_CHUNK = 1 << 18  # descriptors turned into RootSIFT and words at a time (memory bound)


@dataclass(frozen=True)
class RetrievalConfig:
    """Settings of retrieval pairing (the ``retrieval_*`` fields of the sfm section)."""

    top_k: int  # most similar images paired with each image
    vocab_size: int  # visual words (k-means centres)
    sample_descriptors: int  # descriptors sampled from the capture to learn the vocabulary
    kmeans_iterations: int  # mini-batch k-means iterations
    sequential_overlap: int  # successors paired with each frame when the names are a frame sequence (0: none)
    seed: int


@dataclass(frozen=True)
class RetrievalPairs:
    """Image pairs chosen by retrieval, and how they were found."""

    pairs: list[tuple[str, str]]  # each pair once, names sorted within the pair
    num_images: int
    num_retrieved: int  # pairs proposed by visual similarity
    num_sequential: int  # pairs proposed as frame-sequence neighbours (some also retrieved)
    vocab_size: int  # words actually used (at most the descriptors sampled)
    video_like: bool  # names were recognised as a numeric frame sequence


def read_descriptors(database: Path) -> tuple[list[str], list[np.ndarray]]:
    """Image names (database order) and each image's SIFT descriptors, (n_i, 128) uint8."""
    db = pycolmap.Database.open(database)
    try:
        images = sorted(db.read_all_images(), key=lambda image: image.image_id)
        names = [image.name for image in images]
        descriptors = [_descriptor_array(db.read_descriptors(image.image_id)) for image in images]
    finally:
        db.close()
    return names, descriptors


def _descriptor_array(descriptors: object) -> np.ndarray:
    """pycolmap's ``FeatureDescriptors`` (4.x) or a plain array -> (n, 128) uint8."""
    data = np.asarray(getattr(descriptors, "data", descriptors))
    if data.size == 0:
        return np.zeros((0, 128), dtype=np.uint8)
    if data.ndim != 2:
        raise ValueError(f"expected an (n, D) descriptor array, got shape {data.shape}")
    return data


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, square root; (n, 128) -> (n, 128) float32."""
    d = descriptors.astype(np.float32)
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-6)
    return np.sqrt(d)


def assign_words(descriptors: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Nearest centre (k, D) of each descriptor (n, D) -> (n,) int, by squared distance, in chunks."""
    c_sq = (centres * centres).sum(axis=1)  # (k,)
    words = np.empty(len(descriptors), dtype=np.int64)
    for lo in range(0, len(descriptors), _ASSIGN_CHUNK):
        block = descriptors[lo : lo + _ASSIGN_CHUNK]
        # argmin ||x - c||^2 = argmin (||c||^2 - 2 x.c); ||x||^2 is the same for every centre
        words[lo : lo + len(block)] = np.argmin(c_sq[None, :] - 2.0 * (block @ centres.T), axis=1)
    return words


def learn_vocabulary(sample: np.ndarray, vocab_size: int, iterations: int, seed: int) -> np.ndarray:
    """Seeded mini-batch k-means (Sculley 2010) of ``sample`` (n, D) -> centres (k, D), k <= n.

    Centres start at distinct random samples; each iteration assigns a batch of ``4 k`` samples and
    moves every centre toward its batch members with a per-centre learning rate 1 / count.
    """
    rng = np.random.default_rng(seed)
    k = min(vocab_size, len(sample))
    centres = sample[rng.choice(len(sample), size=k, replace=False)].copy()  # (k, D)
    counts = np.zeros(k)
    batch = min(len(sample), 4 * k)
    for _ in range(iterations):
        x = sample[rng.choice(len(sample), size=batch, replace=False)]
        words = assign_words(x, centres)
        order = np.argsort(words, kind="stable")
        used, first, hits = np.unique(words[order], return_index=True, return_counts=True)
        sums = np.add.reduceat(x[order], first, axis=0)  # (len(used), D) member sums per used centre
        counts[used] += hits
        rate = (hits / counts[used])[:, None]
        centres[used] += rate * (sums / hits[:, None] - centres[used])
    return centres


@dataclass(frozen=True)
class VocabularyTree:
    """A two-level vocabulary tree (Nister & Stewenius 2006): ``branching`` top words, each split
    into at most ``branching`` leaves; a descriptor's word is its leaf, ``top * branching + child``."""

    top: np.ndarray  # (b, D) top-level centres
    leaves: list[np.ndarray]  # per top word, (<= b, D) leaf centres
    branching: int

    @property
    def size(self) -> int:
        return self.branching * self.branching

    def words(self, descriptors: np.ndarray) -> np.ndarray:
        """Leaf word of each descriptor (n, D) -> (n,) int: 2 b distances each instead of b^2."""
        top = assign_words(descriptors, self.top)
        words = np.empty(len(descriptors), dtype=np.int64)
        for t in range(len(self.top)):
            members = np.flatnonzero(top == t)
            if len(members):
                words[members] = t * self.branching + assign_words(descriptors[members], self.leaves[t])
        return words


def learn_vocabulary_tree(sample: np.ndarray, vocab_size: int, iterations: int, seed: int) -> VocabularyTree:
    """A two-level tree of about ``vocab_size`` leaves, learnt from ``sample`` (n, D)."""
    branching = max(2, int(np.ceil(np.sqrt(vocab_size))))
    top = learn_vocabulary(sample, branching, iterations, seed)
    assigned = assign_words(sample, top)
    leaves = []
    for t in range(len(top)):
        members = sample[assigned == t]
        if len(members) == 0:
            leaves.append(top[t : t + 1].copy())
        else:
            leaves.append(learn_vocabulary(members, branching, iterations, seed + 1 + t))
    return VocabularyTree(top, leaves, branching)


def bow_vectors(words_per_image: list[np.ndarray], vocab_size: int) -> np.ndarray:
    """tf-idf bags of words, (N, k) float32, rows L2-normalised (empty images: zero rows)."""
    n = len(words_per_image)
    counts = np.zeros((n, vocab_size), dtype=np.float32)
    for i, words in enumerate(words_per_image):
        counts[i] = np.bincount(words, minlength=vocab_size)
    df = (counts > 0).sum(axis=0)  # (k,) images holding each word
    idf = np.log(n / np.maximum(df, 1)).astype(np.float32)
    vectors = np.sqrt(counts) * idf[None, :]  # square-rooted tf against bursty repeated texture
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def frame_order(names: list[str]) -> list[int] | None:
    """Indices of ``names`` in frame order when they are a numeric sequence with one prefix, else None."""
    parsed = [_FRAME_NUMBER.match(Path(name).name) for name in names]
    if len(names) < 3 or any(m is None for m in parsed):
        return None
    prefixes = {(str(Path(name).parent), m.group(1)) for name, m in zip(names, parsed) if m is not None}
    numbers = [int(m.group(2)) for m in parsed if m is not None]
    if len(prefixes) != 1 or len(set(numbers)) != len(numbers):
        return None
    return sorted(range(len(names)), key=lambda i: numbers[i])


def _gather(descriptors: list[np.ndarray], sizes: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows ``rows`` (m,), sorted, of the images' descriptors stacked, without stacking them all."""
    offsets = np.concatenate([[0], np.cumsum(sizes)])  # (N + 1,)
    image = np.searchsorted(offsets, rows, side="right") - 1  # (m,)
    parts = [descriptors[i][rows[image == i] - offsets[i]] for i in np.unique(image)]
    return np.concatenate(parts)


def _chunks(descriptors: list[np.ndarray], rows: int) -> list[np.ndarray]:
    """The images' descriptors in order, stacked into chunks of about ``rows`` rows (whole images)."""
    chunks, current, held = [], [], 0
    for d in descriptors:
        current.append(d)
        held += len(d)
        if held >= rows:
            chunks.append(np.concatenate(current))
            current, held = [], 0
    if current:
        chunks.append(np.concatenate(current))
    return chunks


def retrieve_pairs(names: list[str], descriptors: list[np.ndarray], config: RetrievalConfig) -> RetrievalPairs:
    """Top-k visually similar pairs (plus frame-sequence neighbours) of images ``names``.

    ``descriptors[i]`` (n_i, 128) uint8 are the SIFT descriptors of ``names[i]``.
    """
    n = len(names)
    rng = np.random.default_rng(config.seed)
    sizes = np.array([len(d) for d in descriptors])
    total = int(sizes.sum())
    pairs: set[tuple[int, int]] = set()
    retrieved = 0
    vocab = 0
    if total > 0 and n > 1:
        pick = np.sort(rng.choice(total, size=min(total, config.sample_descriptors), replace=False))
        sample = root_sift(_gather(descriptors, sizes, pick))
        tree = learn_vocabulary_tree(sample, config.vocab_size, config.kmeans_iterations, config.seed)
        vocab = tree.size
        words = [tree.words(root_sift(chunk)) for chunk in _chunks(descriptors, _WORDS_CHUNK)]
        words = np.split(np.concatenate(words), np.cumsum(sizes)[:-1])  # per image, (n_i,)
        vectors = bow_vectors(words, vocab)  # (N, k)
        similarity = vectors @ vectors.T  # (N, N) cosine similarity
        np.fill_diagonal(similarity, -np.inf)
        k = min(config.top_k, n - 1)
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((n, 0), int)
        for i in range(n):
            for j in nearest[i]:
                if sizes[i] and sizes[j]:
                    pairs.add((min(i, int(j)), max(i, int(j))))
        retrieved = len(pairs)
    order = frame_order(names)
    sequential = 0
    if order is not None and config.sequential_overlap > 0:
        neighbours = {
            (min(a, b), max(a, b))
            for pos, a in enumerate(order)
            for b in order[pos + 1 : pos + 1 + config.sequential_overlap]
        }
        sequential = len(neighbours)
        pairs |= neighbours
    named = sorted({tuple(sorted((names[i], names[j]))) for i, j in pairs})
    logger.info(
        "retrieval: %d pairs for %d images (%d by similarity, %d frame neighbours, %d words%s)",
        len(named),
        n,
        retrieved,
        sequential,
        vocab,
        ", video-like names" if order is not None else "",
    )
    return RetrievalPairs(
        pairs=[(a, b) for a, b in named],
        num_images=n,
        num_retrieved=retrieved,
        num_sequential=sequential,
        vocab_size=vocab,
        video_like=order is not None,
    )


def write_pairs(pairs: list[tuple[str, str]], path: Path) -> None:
    """One ``name1 name2`` line per pair (COLMAP's image-pairs list; names must hold no spaces)."""
    bad = [name for pair in pairs for name in pair if any(c.isspace() for c in name)]
    if bad:
        raise ValueError(f"image name with white space cannot go into a COLMAP pairs file: {bad[0]!r}")
    path.write_text("".join(f"{a} {b}\n" for a, b in pairs))
