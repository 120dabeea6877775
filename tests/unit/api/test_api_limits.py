"""Stream accounting, tolerant decoding and whole-name matching: the pieces of the API's boundary."""

from __future__ import annotations

import pytest

from capsa.api.gen.capsa.v1 import jobs_pb2 as pb
from capsa.api.limits import StreamLimits
from capsa.api.streams import poll_interval
from capsa.api.wire import Malformed, tolerant, unwrap_requests
from capsa.capsules.versions import check_name
from capsa.errors import InvalidArgument, LimitExceeded
from capsa.networks.model import validate_network_name
from capsa.volumes.model import validate_volume_name


def test_a_client_beyond_its_stream_limit_is_refused_naming_the_limit() -> None:
    limits = StreamLimits(total=10, per_client=2)
    limits.acquire("alice", "/capsa.v1.JobService/StreamLogs")
    limits.acquire("alice", "/capsa.v1.JobService/StreamLogs")
    with pytest.raises(LimitExceeded, match="limit 2 per client"):
        limits.acquire("alice", "/capsa.v1.JobService/StreamLogs")
    limits.acquire("bob", "/capsa.v1.JobService/StreamLogs")   # others are not affected
    limits.release("alice")
    limits.acquire("alice", "/capsa.v1.JobService/StreamLogs")
    assert limits.open_streams("alice") == 2 and limits.open_streams() == 3


def test_the_global_stream_limit_holds_across_clients() -> None:
    limits = StreamLimits(total=3, per_client=3)
    for who in ("a", "b", "c"):
        limits.acquire(who, "/capsa.v1.MetricsService/MetricsStream")
    with pytest.raises(LimitExceeded, match="limit 3; api.max_streams"):
        limits.acquire("d", "/capsa.v1.MetricsService/MetricsStream")
    for who in ("a", "b", "c"):
        limits.release(who)
    assert limits.open_streams() == 0


def test_undecodable_bytes_become_a_malformed_value_not_an_exception() -> None:
    decode = tolerant(pb.GetJobRequest.FromString)
    assert decode is not None
    assert decode(pb.GetJobRequest(id="abc").SerializeToString()).id == "abc"
    bad_utf8 = b"\x0a\x02\xff\xfe"   # field 1 (string), two bytes that are not UTF-8
    assert isinstance(decode(bad_utf8), Malformed)
    assert isinstance(decode(b"\xff\xff\xff\xff"), Malformed)


def test_a_request_stream_stops_at_its_first_malformed_message() -> None:
    items = unwrap_requests(iter([pb.UploadChunk(data=b"x"), Malformed("DecodeError: truncated")]),
                            "/capsa.v1.JobService/UploadFiles")
    assert next(items).data == b"x"
    with pytest.raises(InvalidArgument, match="malformed request to UploadFiles"):
        next(items)


def test_follow_polls_fast_while_output_is_fresh_and_slows_down_when_idle() -> None:
    assert poll_interval(0.1) == 0.02
    assert poll_interval(5) == 0.1
    assert poll_interval(60) == 0.25


@pytest.mark.parametrize("check,name", [(check_name, "nl\n"), (validate_volume_name, "vnl\n"),
                                        (validate_network_name, "fzn\n")])
def test_names_are_matched_whole_so_a_trailing_newline_is_refused(check, name: str) -> None:  # type: ignore[no-untyped-def]
    check(name.rstrip("\n"))
    with pytest.raises(InvalidArgument):
        check(name)
