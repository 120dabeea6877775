"""The memory a zygote shares with its standbys, and the page copying learned through it (no root needed)."""

from __future__ import annotations

import mmap
import os

from capsa.runtime import standby


def _present_pages(address: int, pages: int) -> int:
    """How many of the ``pages`` pages at ``address`` are in memory (/proc/self/pagemap bit 63)."""
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        entries = memoryview(os.pread(fd, pages * 8, address // mmap.PAGESIZE * 8)).cast("Q")
        return sum(1 for e in entries if e >> 63)
    finally:
        os.close(fd)


def _address(region: mmap.mmap) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(region))


def test_the_template_build_and_the_learned_pages_are_seen_by_a_forked_process() -> None:
    shared = standby.StandbyShared()
    shared.publish_template(3)
    assert shared.learned_pages() == [] and shared.template_build() == 3
    child = os.fork()
    if child == 0:   # a standby: a clone made after the shared memory
        ok = shared.claim_learning() and not shared.claim_learning()
        shared.record_pages([(0x1000, 0x2000), (0x8000, 0x1000)])
        os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert shared.learned_pages() == [(0x1000, 0x2000), (0x8000, 0x1000)]
    assert not shared.claim_learning()   # learned once per zygote
    shared.publish_template(4)
    assert shared.template_build() == 4


def test_a_learning_that_found_nothing_is_not_retried_by_every_standby() -> None:
    shared = standby.StandbyShared()
    assert shared.claim_learning()
    shared.record_pages([])
    assert shared.learned_pages() == [] and not shared.claim_learning()


def test_own_pages_makes_the_ranges_resident_in_one_call() -> None:
    size = 64 * mmap.PAGESIZE
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    address = _address(region)
    assert _present_pages(address, 64) == 0
    standby.own_pages([(address, 16 * mmap.PAGESIZE)])
    assert _present_pages(address, 64) == 16
    standby.own_pages([(address + size + (1 << 30), mmap.PAGESIZE)])   # a range no longer mapped: skipped
    del address
    region.close()


def test_the_pages_a_process_wrote_since_its_fork_are_what_it_learns() -> None:
    size = 32 * mmap.PAGESIZE
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    region[:] = b"x" * size   # all present, and shared with the child after the fork
    address = _address(region)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        region[5 * mmap.PAGESIZE] = 1   # copy-on-write: pages 5 and 6..8 become the child's own
        region[6 * mmap.PAGESIZE:9 * mmap.PAGESIZE] = b"y" * (3 * mmap.PAGESIZE)
        ranges = [r for r in standby._exclusive_pages() if address <= r[0] < address + size]
        os.write(write_end, repr(ranges).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        ranges = eval(fh.read())  # noqa: S307 - our own child's repr of a list of int pairs
    os.waitpid(child, 0)
    assert ranges == [(address + 5 * mmap.PAGESIZE, 4 * mmap.PAGESIZE)]
    del address
    region.close()
