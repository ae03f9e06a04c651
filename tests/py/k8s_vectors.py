"""Exact forward-protocol requests from Fluent Bit 5.x and Fluentd 1.18 ``out_forward``
for Kubernetes records (containerd nodes: ``/var/log/containers/*.log`` tailed with the
``cri`` parser, then Fluent Bit's ``kubernetes`` filter or Fluentd's
``kubernetes_metadata`` filter).

This module defines data only (no tests). ``VECTORS`` lists :class:`Vector` values; a
test can check ``decode(v.wire) == v.decoded``, send ``v.wire`` to the gateway, expect
``v.ack`` back when ``v.chunk`` is set, and expect ``v.events`` to be published, in order.

Every fact below was read from the source named with it ("repo path function"). Where
the source could not settle a detail, the text says so and the vectors follow PROTOCOL.md.

Fluent Bit 5.x, out_forward
---------------------------
* Mode. Without ``Compress`` it sends **Forward mode**, never PackedForward:
  ``[tag, [entry, ...]]`` or ``[tag, [entry, ...], option]``. The 2nd element is a msgpack
  array header (fixarray for fewer than 16 entries) and then the chunk's entries as they
  are. (fluent/fluent-bit plugins/out_forward/forward.c flush_forward_mode;
  plugins/out_forward/forward_format.c flb_forward_format, which picks MODE_FORWARD
  unless ``Time_as_Integer`` or a record-dependent ``Tag`` is set.)
* ``Compress gzip``: CompressedPackedForward ``[tag, bin, option]``. The container is
  **bin** (msgpack_pack_bin: bin8/bin16/bin32 by size), holding **one** gzip member made
  from the whole chunk (forward.c flush_forward_mode calls flb_gzip_compress once).
  The member is framed by hand: header ``1f 8b 08 00 00 00 00 00 00 ff`` (no mtime,
  OS 255), raw deflate from miniz (level default, window 15, memLevel 9), then CRC32
  and ISIZE little-endian (fluent/fluent-bit src/flb_gzip.c gzip_header,
  flb_gzip_compress). The deflate bytes below come from Python's zlib, not miniz, so
  they are not byte-identical to a real Fluent Bit's; the framing and the decompressed
  content are.
* Entry layout. The Fluent Bit v2 internal event is ``[[EventTime, metadata], body]``
  and every array/map that the log event encoder opens is written with a **32-bit
  header**: ``dd 00 00 00 02`` for the arrays, ``df 00 00 00 NN`` for the maps
  (fluent/fluent-bit src/flb_log_event_encoder.c flb_log_event_encoder_emit_record;
  src/flb_log_event_encoder_dynamic_field.c
  flb_log_event_encoder_dynamic_field_scope_enter; src/flb_mp.c
  flb_mp_map_header_init / flb_mp_array_header_init, "we force ... 0xdf"). The
  kubernetes filter re-encodes every record with that encoder and does not copy the
  incoming metadata, so the metadata is always the empty ``df 00 00 00 00``; the body
  map is ``df 00 00 00 05`` + the tail keys + ``kubernetes`` (plugins/filter_kubernetes/
  kubernetes.c cb_kube_filter, pack_map_content).
* What out_forward does with that layout depends on ``Retain_Metadata_In_Forward_Mode``:
  from **5.0.5** its default is ``true`` (fluent-bit PR #11756, issues #11814, #11877;
  the stored forward.c, a 2026 revision before that change, still says ``"false"`` in
  its config_map) and the chunk bytes go out unchanged: ``[[EventTime, {}], record]``
  with the 32-bit headers. With ``false`` (the default in 5.0.0-5.0.4) forward.c
  flush_forward_mode first calls forward_format.c flb_forward_format_transcode with
  FLB_LOG_EVENT_FORMAT_FORWARD: each entry becomes ``dd 00 00 00 02`` + EventTime + the
  body re-packed by msgpack_pack_object (minimal headers, fixmap), metadata dropped.
* EventTime: always **fixext8** ``d7 00 <u32 sec> <u32 nsec>`` (msgpack-c packs an 8-byte
  ext as fixext8; src/flb_log_event_encoder_primitives.c
  flb_log_event_encoder_append_forward_v1_timestamp, used by the v1 and v2 formats).
* Option map (forward_format.c append_options): always a **map32** (``df 00 00 00 NN``,
  flb_mp_map_header_init). Sent only when ``send_options`` is true, which
  ``Require_ack_response`` and ``Compress gzip`` switch on (forward.c
  config_set_properties); without them the request is the 2-element
  ``[tag, entries]``, no option at all. Keys, in this order, when present:

  - ``chunk``: str8 (``d9 20``) of 32 lowercase hex characters: the first 16 bytes of
    SHA-512 over the entries **as sent before compression** (the raw chunk with
    retain-metadata on, the transcoded entries with it off). It is a content hash, so
    a retry of the same chunk carries the same id. Only with Require_ack_response.
  - ``size``: number of entries (msgpack_pack_int64, so positive fixint here).
  - ``compressed``: ``"gzip"``, only with Compress gzip.
  - ``fluent_signal``: int, ``0`` for logs (FLB_EVENT_TYPE_LOGS), always present.
  - then any ``add_option`` pairs, and ``metadata`` (message mode only).

  After writing, it waits for ``{"ack": chunk}`` and compares it with the first value of
  the option map (forward.c flush_forward_mode, forward_read_ack).

Fluentd 1.18, out_forward
-------------------------
* Mode: always PackedForward/CompressedPackedForward ``[tag, entries, option]``: fixarray
  ``93``, the tag as str (force_encoding UTF-8), then the chunk's bytes in a **str32**
  container (``db <u32 len>``) **even when they are gzip data**, then the option map
  (fluent/fluentd lib/fluent/plugin/out_forward.rb Node#send_data_actual,
  FORWARD_HEADER).
* Option: a Ruby Hash, so a fixmap in insertion order: ``size`` (chunk.size, the event
  count), ``compressed`` (the Symbol ``:text`` or ``:gzip`` packed as the str
  ``"text"``/``"gzip"``; ``"text"`` is sent even uncompressed), then ``chunk`` only with
  ``require_ack_response`` (out_forward.rb Node#send_data_actual).
* ``chunk`` = ``Base64.encode64(chunk.unique_id)``: 24 base64 characters **plus a trailing
  newline** (25 bytes, fixstr ``b9``). unique_id is 16 bytes: 64 bits of
  ``(unix microseconds << 12 | rand(0xfff))`` then two random u32, big-endian
  (lib/fluent/unique_id.rb UniqueId.generate). The ack must echo it exactly, newline
  included: AckHandler compares ``res['ack'] != Base64.encode64(chunk_id)``
  (lib/fluent/plugin/out_forward/ack_handler.rb read_ack_from_sock). A retried chunk
  keeps its unique_id, so its chunk id.
* ``compress gzip``: the buffer chunk stores one gzip member per write into it
  (lib/fluent/plugin/output.rb FORMAT_COMPRESSED_MSGPACK_STREAM →
  lib/fluent/event.rb EventStream#to_compressed_msgpack_stream →
  lib/fluent/plugin/compressable.rb Compressable#compress; lib/fluent/plugin/buffer/
  chunk.rb Chunk::Decompressable#append), and ``chunk.open(compressed: :gzip)`` sends
  the stored members as they are: **several concatenated gzip members**, one per emitted
  event stream (typically one per in_tail read). Each member comes from
  Zlib::GzipWriter: header ``1f 8b 08 00 <mtime u32 LE> 00 03`` (mtime = the time of the
  write, OS 3), default level. The deflate bytes here are Python zlib's. zstd is not in
  1.18 (it came in 1.19.0, CHANGELOG).
* Entries: the msgpack stream of ``[EventTime, record]`` (event.rb
  EventStream#to_msgpack_stream); fixarray ``92``, EventTime ext type 0 as **fixext8**
  (msgpack-ruby packs an 8-byte ext payload as fixext8), minimal headers elsewhere.
* Strings: msgpack-ruby writes a String whose encoding is ASCII-8BIT as **bin**, others
  as str (msgpack-ruby ext/msgpack/packer.h msgpack_packer_write_string_value). in_tail
  reads lines as ASCII-8BIT unless ``encoding`` is set (lib/fluent/plugin/in_tail.rb
  IOHandler#initialize ``FIFO.new(from_encoding || Encoding::ASCII_8BIT, ...)``), so the
  values the cri parser cuts from the line (``stream``, ``logtag``, ``message``,
  ``time``) arrive as **bin8**, while the keys (Ruby literals / config strings) and
  everything the metadata filter adds (JSON from the API server, tag captures) arrive
  as str. (Seen by others too: opentelemetry-collector-contrib#50235,
  fluentd PR #2990.) The gateway treats bin like str; ``events`` shows them as str.
* cri parser record: ``{"stream", "logtag", "message", "time"}`` in that order (``time``
  kept, appended last; fluent/fluent-plugin-parser-cri lib/fluent/plugin/parser_cri.rb
  CriParser#parse).
* kubernetes_metadata (fabric8io/fluent-plugin-kubernetes_metadata_filter, current
  ``frozen_string_literal`` revision): ``record.merge(metadata)`` appends ``docker`` =
  ``{"container_id": <64 hex>}`` (from the tag, replaced by the pod status containerID
  minus ``containerd://``; dropped only if empty) and ``kubernetes`` (lib/fluent/plugin/
  filter_kubernetes_metadata.rb get_metadata_for_record, filter). Key order of
  ``kubernetes`` (Ruby hashes keep insertion order): ``container_name``,
  ``namespace_name``, ``pod_name``, ``container_image``, ``container_image_id``, then
  from the pod: ``pod_id``, ``pod_ip``, ``host``, ``labels``, [``annotations`` only for
  keys matching ``annotation_match``, empty by default], ``master_url``, then from the
  namespace: ``namespace_id``, ``namespace_labels`` (lib/fluent/plugin/
  kubernetes_metadata_common.rb parse_pod_metadata, parse_namespace_metadata;
  kubernetes_metadata_cache_strategy.rb get_pod_metadata, which deletes
  ``creation_timestamp``). No de_dot in current versions: label keys keep dots and
  slashes. The cache_strategy file read was an older revision; the order it gives was
  not re-checked against the newest one.

Fluent Bit kubernetes filter record
-----------------------------------
* tail + ``multiline.parser cri``: regex
  ``^(?<time>.+?) (?<stream>stdout|stderr) (?<_p>F|P) (?<log>.*)$``, ``time`` kept
  (time_keep true), so the body starts ``time, stream, _p, log`` (src/multiline/
  flb_ml_parser_cri.c cri_parser_create). That the regex backend emits the captures in
  group order was not read from the source (Oniguruma name iteration); the vectors assume
  it, as Fluent Bit's own examples show.
* ``kubernetes`` map, fixmap in this order, keys present only when known
  (plugins/filter_kubernetes/kube_meta.c merge_meta): ``pod_name``, ``namespace_name``,
  ``pod_id``, ``labels``, ``annotations`` (both on by default; a pod without
  annotations has no key), [``ownerReferences`` off by default], ``host``,
  ``pod_ip``, ``container_name``, ``docker_id`` (from the file name, 64 hex),
  ``container_hash`` (status imageID, e.g. ``registry/x@sha256:...``),
  ``container_image`` (status image) (kube_meta.c extract_container_hash). Appended
  after the tail keys as the last body key (kubernetes.c pack_map_content).
  ``Merge_Log`` is off by default, so ``log`` stays a string.

Differences from PROTOCOL.md: Fluent Bit sends Forward mode, not PackedForward, unless
compressing; its ``[[EventTime, {}], record]`` default holds from 5.0.5 only; Fluentd's
str32 container is used for gzip data too; Fluentd's line values are bin, not str.
"""

from __future__ import annotations

import base64
import calendar
import dataclasses
import datetime
import gzip
import hashlib
import struct
import zlib
from typing import Optional

import msgpack

from fwd import Raw, ack, array_header, bin8, bin_auto, enc, fixstr, option, pack, packed_forward, raw_map, str8, str32, t_event

FLUENT_BIT = "fluent-bit 5.x"
FLUENTD = "fluentd 1.18"


@dataclasses.dataclass(frozen=True)
class Vector:
    name: str
    peer: str
    #: where the shape was read, "repo path function; ..."
    source: str
    #: the exact request bytes
    wire: bytes
    #: what decode(wire) returns: EventTime as (sec, nsec), packed entries as a list
    decoded: list
    #: the ack id (the option's chunk value), or None when no ack is asked for
    chunk: Optional[str]
    #: the records the gateway must publish, in order (bin values shown as str)
    events: list
    tag: str
    #: the exact ack the gateway must answer with (the chunk in the client's form)
    ack: Optional[bytes]
    notes: str


# ----------------------------------------------------------------------------- decode


def _ext_hook(code: int, data: bytes):
    if code == 0 and len(data) == 8:
        return struct.unpack(">II", data)
    return msgpack.ExtType(code, data)


def _unpack_stream(data: bytes) -> list:
    u = msgpack.Unpacker(raw=False, ext_hook=_ext_hook, strict_map_key=False)
    u.feed(data)
    return list(u)


def decode(wire: bytes):
    """Decode one forward request as Python values.

    EventTime (ext type 0) becomes ``(sec, nsec)``; bin becomes bytes, str becomes str.
    For PackedForward (2nd element bin or str) the entries are unpacked into a list,
    after gunzipping every member when ``option.compressed == "gzip"``.
    """
    # surrogateescape keeps a str32 container holding non-UTF-8 bytes (Fluentd's
    # entries) recoverable byte for byte.
    req = msgpack.unpackb(wire, raw=False, ext_hook=_ext_hook, strict_map_key=False,
                          unicode_errors="surrogateescape")
    if len(req) >= 2 and isinstance(req[1], (bytes, str)):
        payload = req[1] if isinstance(req[1], bytes) else req[1].encode("utf-8", "surrogateescape")
        opt = req[2] if len(req) > 2 else None
        if isinstance(opt, dict) and opt.get("compressed") == "gzip":
            payload = gzip.decompress(payload)  # handles concatenated members
        req[1] = _unpack_stream(payload)
    return req


# ----------------------------------------------------------------------------- helpers


def _ts(text: str):
    """``2026-03-14T09:26:53.123456789Z`` -> (sec, nsec)."""
    whole, frac = text.rstrip("Z").split(".")
    dt = datetime.datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(dt.timetuple()), int(frac.ljust(9, "0"))


def _hex64(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


def _deflate_raw(data: bytes, mem_level: int) -> bytes:
    c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15, mem_level, zlib.Z_DEFAULT_STRATEGY)
    return c.compress(data) + c.flush()


def _gzip_trailer(data: bytes) -> bytes:
    return struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)


def flb_gzip(data: bytes) -> bytes:
    """One gzip member framed like src/flb_gzip.c flb_gzip_compress (deflate: ours)."""
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + _deflate_raw(data, 9) + _gzip_trailer(data)


def ruby_gzip(data: bytes, mtime: int) -> bytes:
    """One gzip member framed like Ruby's Zlib::GzipWriter (mtime set, OS 3 = Unix)."""
    return (b"\x1f\x8b\x08\x00" + struct.pack("<I", mtime) + b"\x00\x03"
            + _deflate_raw(data, 8) + _gzip_trailer(data))


ARRAY32_2 = b"\xdd\x00\x00\x00\x02"
MAP32_EMPTY = b"\xdf\x00\x00\x00\x00"


def map32(pairs) -> bytes:
    """A map with a 32-bit header, as flb_mp_map_header_init writes it."""
    return b"\xdf" + struct.pack(">I", len(pairs)) + b"".join(pack(k) + enc(v) for k, v in pairs)


# ----------------------------------------------------------------------------- pods

Pod = dict


def _pod(ns, name, container, pod_id, host, ip, image, labels, annotations, ns_id):
    return dict(
        ns=ns, name=name, container=container, pod_id=pod_id, host=host, ip=ip,
        image=image, image_id=image.rsplit(":", 1)[0] + "@sha256:" + _hex64("image " + image),
        docker_id=_hex64("container %s/%s/%s" % (ns, name, container)),
        labels=labels, annotations=annotations, ns_id=ns_id,
    )


ACME_WEB = _pod(
    "acme", "web-5d8f7c9b6c-x7k2p", "web", "3f1c2a9e-8b7d-4e6f-9a01-2b3c4d5e6f70",
    "node-a1", "10.244.1.23", "registry.acme.example/shop/web:1.4.2",
    {"app.kubernetes.io/name": "web", "app.kubernetes.io/part-of": "shop", "pod-template-hash": "5d8f7c9b6c"},
    {"prometheus.io/port": "9102", "prometheus.io/scrape": "true"},
    "6a0e3c1b-2f4d-4b8a-9c7e-1d2e3f405162",
)
BETA_API = _pod(
    "beta", "api-7c9d6b5f4-q2w9z", "api", "9b2e7d41-5c3a-4f8e-b6d2-0a1b2c3d4e5f",
    "node-b2", "10.244.2.57", "ghcr.io/beta/api:2.0.1",
    {"app.kubernetes.io/name": "api", "app.kubernetes.io/version": "2.0.1", "pod-template-hash": "7c9d6b5f4"},
    {},
    "c47d9e20-8a1b-4c3d-a5e6-f70812233445",
)

MASTER_URL = "https://10.96.0.1:443/api"

# (CRI time, stream, line) per pod
ACME_LINES = [
    ("2026-03-14T09:26:53.120458713Z", "stdout",
     '10.244.0.1 - - [14/Mar/2026:09:26:53 +0000] "GET /healthz HTTP/1.1" 200 2 "-" "kube-probe/1.31"'),
    ("2026-03-14T09:26:53.387110241Z", "stdout",
     '10.244.3.9 - - [14/Mar/2026:09:26:53 +0000] "POST /cart/items HTTP/1.1" 201 88 "-" "Mozilla/5.0"'),
    ("2026-03-14T09:26:54.002931577Z", "stderr",
     "2026/03/14 09:26:54 [warn] 29#29: *118 an upstream response is buffered to a temporary file"),
]
BETA_LINES = [
    ("2026-03-14T09:27:01.518204933Z", "stdout",
     '{"level":"info","msg":"order created","order_id":"o-48213","took_ms":12}'),
    ("2026-03-14T09:27:01.930017465Z", "stderr",
     '{"level":"error","msg":"upstream timeout","path":"/v1/payments","after_ms":5000}'),
    ("2026-03-14T09:27:02.044780129Z", "stdout", "GET /v1/orders/o-48213 200 3ms"),
]


def _log_name(pod) -> str:
    return "var.log.containers.%s_%s_%s-%s.log" % (pod["name"], pod["ns"], pod["container"], pod["docker_id"])


# ----------------------------------------------------------------------------- Fluent Bit


def fb_kubernetes(pod) -> dict:
    """The ``kubernetes`` map of kube_meta.c merge_meta, in its order."""
    k = {"pod_name": pod["name"], "namespace_name": pod["ns"], "pod_id": pod["pod_id"],
         "labels": pod["labels"]}
    if pod["annotations"]:
        k["annotations"] = pod["annotations"]
    k.update({"host": pod["host"], "pod_ip": pod["ip"], "container_name": pod["container"],
              "docker_id": pod["docker_id"], "container_hash": pod["image_id"],
              "container_image": pod["image"]})
    return k


def fb_record(pod, line) -> dict:
    t, stream, text = line
    return {"time": t, "stream": stream, "_p": "F", "log": text, "kubernetes": fb_kubernetes(pod)}


def fb_entry_v2(line, record) -> bytes:
    """``[[EventTime, {}], record]`` as the v2 log event encoder writes it."""
    sec, nsec = _ts(line[0])
    return ARRAY32_2 + ARRAY32_2 + t_event(sec, nsec) + MAP32_EMPTY + map32(list(record.items()))


def fb_entry_forward(line, record) -> bytes:
    """``[EventTime, record]`` after flb_forward_format_transcode (FORWARD format)."""
    sec, nsec = _ts(line[0])
    return ARRAY32_2 + t_event(sec, nsec) + pack(record)


def fb_chunk_id(entries: bytes) -> str:
    return hashlib.sha512(entries).digest()[:16].hex()


def fb_forward(tag, entries, opt: Optional[bytes]) -> bytes:
    head = (b"\x93" if opt is not None else b"\x92") + pack(tag) + array_header(len(entries))
    return head + b"".join(entries) + (opt or b"")


def fb_compressed(tag, entries, opt: bytes) -> bytes:
    return b"\x93" + pack(tag) + bin_auto(flb_gzip(b"".join(entries))) + opt


FB_SOURCE = ("fluent/fluent-bit plugins/out_forward/forward.c flush_forward_mode; "
             "fluent/fluent-bit plugins/out_forward/forward_format.c append_options; "
             "fluent/fluent-bit src/flb_log_event_encoder.c flb_log_event_encoder_emit_record; "
             "fluent/fluent-bit plugins/filter_kubernetes/kubernetes.c pack_map_content; "
             "fluent/fluent-bit plugins/filter_kubernetes/kube_meta.c merge_meta; "
             "fluent/fluent-bit src/multiline/flb_ml_parser_cri.c cri_parser_create")


def _fb_vector(name, pod, lines, *, ack_on, gzip_on, retain=True, notes=""):
    tag = "kube." + _log_name(pod)
    records = [fb_record(pod, ln) for ln in lines]
    build = fb_entry_v2 if retain else fb_entry_forward
    entries = [build(ln, r) for ln, r in zip(lines, records)]
    chunk = fb_chunk_id(b"".join(entries)) if ack_on else None

    pairs = []
    if chunk is not None:
        pairs.append(("chunk", str8(chunk)))
    send_options = ack_on or gzip_on
    if send_options:
        pairs.append(("size", len(entries)))
    if gzip_on:
        pairs.append(("compressed", "gzip"))
    if send_options:
        pairs.append(("fluent_signal", 0))
    opt = map32(pairs) if send_options else None

    wire = fb_compressed(tag, entries, opt) if gzip_on else fb_forward(tag, entries, opt)

    if retain:
        dec_entries = [[[_ts(ln[0]), {}], r] for ln, r in zip(lines, records)]
    else:
        dec_entries = [[_ts(ln[0]), r] for ln, r in zip(lines, records)]
    decoded = [tag, dec_entries]
    if opt is not None:
        decoded.append({k: (bytes(v)[2:].decode() if isinstance(v, Raw) else v) for k, v in pairs})

    return Vector(
        name=name, peer=FLUENT_BIT, source=FB_SOURCE, wire=wire, decoded=decoded,
        chunk=chunk, events=records, tag=tag,
        ack=ack(str8(chunk)) if chunk is not None else None, notes=notes,
    )


# ----------------------------------------------------------------------------- Fluentd


def fd_kubernetes(pod) -> dict:
    """The ``kubernetes`` map of filter_kubernetes_metadata.rb get_metadata_for_record."""
    return {
        "container_name": pod["container"],
        "namespace_name": pod["ns"],
        "pod_name": pod["name"],
        "container_image": pod["image"],
        "container_image_id": pod["image_id"],
        "pod_id": pod["pod_id"],
        "pod_ip": pod["ip"],
        "host": pod["host"],
        "labels": pod["labels"],
        "master_url": MASTER_URL,
        "namespace_id": pod["ns_id"],
        "namespace_labels": {"kubernetes.io/metadata.name": pod["ns"]},
    }


def _fd_cri(line):
    t, stream, text = line
    return [("stream", stream), ("logtag", "F"), ("message", text), ("time", t)]


def fd_record_wire(pod, line) -> bytes:
    """The record as msgpack-ruby writes it: line values bin8 (ASCII-8BIT), the rest str."""
    pairs = [(k, bin8(v.encode())) for k, v in _fd_cri(line)]
    pairs += [("docker", {"container_id": pod["docker_id"]}), ("kubernetes", fd_kubernetes(pod))]
    return bytes(raw_map(*pairs))


def fd_record_decoded(pod, line, text_type) -> dict:
    r = {k: text_type(v) for k, v in _fd_cri(line)}
    r["docker"] = {"container_id": pod["docker_id"]}
    r["kubernetes"] = fd_kubernetes(pod)
    return r


def fd_entry(pod, line) -> bytes:
    sec, nsec = _ts(line[0])
    return b"\x92" + t_event(sec, nsec) + fd_record_wire(pod, line)


def fd_unique_id(usec_since_epoch: int, rand12: int, r1: int, r2: int) -> bytes:
    u1 = usec_since_epoch << 12 | rand12
    return struct.pack(">IIII", u1 >> 32, u1 & 0xFFFFFFFF, r1, r2)


def fd_chunk(unique_id: bytes) -> str:
    """Base64.encode64: newline-terminated (one line for 16 bytes)."""
    return base64.b64encode(unique_id).decode() + "\n"


FD_SOURCE = ("fluent/fluentd lib/fluent/plugin/out_forward.rb Node#send_data_actual; "
             "fluent/fluentd lib/fluent/unique_id.rb UniqueId.generate; "
             "fluent/fluentd lib/fluent/event.rb EventStream#to_msgpack_stream; "
             "fluent/fluentd lib/fluent/plugin/compressable.rb Compressable#compress; "
             "fluent/fluentd lib/fluent/plugin/buffer/chunk.rb Chunk::Decompressable#append; "
             "fluent/fluentd lib/fluent/plugin/in_tail.rb IOHandler#initialize; "
             "fluent/fluent-plugin-parser-cri lib/fluent/plugin/parser_cri.rb CriParser#parse; "
             "fabric8io/fluent-plugin-kubernetes_metadata_filter lib/fluent/plugin/"
             "filter_kubernetes_metadata.rb get_metadata_for_record; "
             "msgpack/msgpack-ruby ext/msgpack/packer.h msgpack_packer_write_string_value")


def _fd_vector(name, pod, lines, *, unique_id: Optional[bytes], members: Optional[list] = None,
               mtimes: Optional[list] = None, notes=""):
    """``members``: how many entries go into each gzip member (None: uncompressed)."""
    tag = "kubernetes." + _log_name(pod)
    entries = [fd_entry(pod, ln) for ln in lines]
    compressed = "gzip" if members else "text"
    chunk = fd_chunk(unique_id) if unique_id is not None else None

    if members:
        assert sum(members) == len(entries) and len(members) == len(mtimes)
        body, i = b"", 0
        for n, mtime in zip(members, mtimes):
            body += ruby_gzip(b"".join(entries[i:i + n]), mtime)
            i += n
    else:
        body = b"".join(entries)

    pairs = [("size", len(entries)), ("compressed", compressed)]
    if chunk is not None:
        pairs.append(("chunk", fixstr(chunk)))
    wire = packed_forward(tag, body, option(*pairs), container=str32)

    dec_opt = {"size": len(entries), "compressed": compressed}
    if chunk is not None:
        dec_opt["chunk"] = chunk
    decoded = [tag, [[_ts(ln[0]), fd_record_decoded(pod, ln, str.encode)] for ln in lines], dec_opt]

    return Vector(
        name=name, peer=FLUENTD, source=FD_SOURCE, wire=wire, decoded=decoded,
        chunk=chunk, events=[fd_record_decoded(pod, ln, str) for ln in lines], tag=tag,
        ack=ack(fixstr(chunk)) if chunk is not None else None, notes=notes,
    )


# unix microseconds when each chunk was created (2026-03-14T09:27:05.250137Z, 09:27:03.771904Z)
_FD_USEC_1 = (calendar.timegm((2026, 3, 14, 9, 27, 5, 0, 0, 0)) * 10**6) + 250137
_FD_USEC_2 = (calendar.timegm((2026, 3, 14, 9, 27, 3, 0, 0, 0)) * 10**6) + 771904

# ----------------------------------------------------------------------------- vectors

VECTORS = [
    _fb_vector(
        "fluent-bit-forward-noack", ACME_WEB, ACME_LINES, ack_on=False, gzip_on=False,
        notes="Default out_forward (5.0.5+): Forward mode [tag, [entries]] with NO option "
              "element (2-element array, 0x92); entries [[EventTime, {}], record] with "
              "array32/map32 headers (dd 00 00 00 02 dd 00 00 00 02 d7 00 .. df 00 00 00 00 "
              "df 00 00 00 05 ..). No ack expected.",
    ),
    _fb_vector(
        "fluent-bit-forward-ack", BETA_API, BETA_LINES, ack_on=True, gzip_on=False,
        notes="Require_ack_response on: option map32 {chunk: str8 32 hex = sha512(entries)[:16], "
              "size: 3, fluent_signal: 0}, chunk first. Ack {\"ack\": chunk} with the chunk "
              "as str8, as sent.",
    ),
    _fb_vector(
        "fluent-bit-gzip", ACME_WEB, ACME_LINES[:2], ack_on=False, gzip_on=True,
        notes="Compress gzip: CompressedPackedForward [tag, bin(one gzip member), "
              "map32 {size: 2, compressed: \"gzip\", fluent_signal: 0}]. No chunk, no ack.",
    ),
    _fb_vector(
        "fluent-bit-gzip-ack", BETA_API, BETA_LINES[1:], ack_on=True, gzip_on=True,
        notes="Compress gzip + Require_ack_response: option order chunk, size, compressed, "
              "fluent_signal; the chunk hashes the entries before compression.",
    ),
    _fb_vector(
        "fluent-bit-forward-ack-nometa", ACME_WEB, ACME_LINES, ack_on=True, gzip_on=False, retain=False,
        notes="Retain_Metadata_In_Forward_Mode off (the default of 5.0.0-5.0.4): entries "
              "transcoded to [EventTime, record] (dd 00 00 00 02 d7 00 .. then a fixmap "
              "record), metadata dropped; the chunk hashes the transcoded entries.",
    ),
    _fd_vector(
        "fluentd-packed-ack", ACME_WEB, ACME_LINES,
        unique_id=fd_unique_id(_FD_USEC_1, 0x5A3, 0x9C41E2D7, 0x3B7F0A65),
        notes="require_ack_response true: PackedForward [tag, str32(entries), fixmap "
              "{size: 3, compressed: \"text\", chunk: base64(16 bytes) + \"\\n\"}]; the ack "
              "must carry the chunk with its newline. Line values are bin8.",
    ),
    _fd_vector(
        "fluentd-gzip", BETA_API, BETA_LINES, unique_id=None, members=[2, 1],
        mtimes=[_ts(BETA_LINES[1][0])[0], _ts(BETA_LINES[2][0])[0]],
        notes="compress gzip: CompressedPackedForward, entries still in a str32 container, "
              "2 gzip members (2 events from one in_tail read, then 1), option fixmap "
              "{size: 3, compressed: \"gzip\"}. No chunk, no ack.",
    ),
    _fd_vector(
        "fluentd-gzip-ack", ACME_WEB, ACME_LINES, members=[1, 1, 1],
        mtimes=[_ts(ln[0])[0] for ln in ACME_LINES],
        unique_id=fd_unique_id(_FD_USEC_2, 0x0E1, 0x12AB34CD, 0xF00DBA5E),
        notes="compress gzip + require_ack_response: 3 gzip members, one event each; option "
              "{size: 3, compressed: \"gzip\", chunk: ..\\n}.",
    ),
]

BY_NAME = {v.name: v for v in VECTORS}
