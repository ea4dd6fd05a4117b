//! The reliable layer for lossy serial links (docs/reliable.md is the
//! normative description; this is how the code implements it).
//!
//! SerialPacker frames drop or corrupt (a bad CRC drops the frame) but never
//! invent data. On top, this layer gives exactly-once, in-order delivery of
//! messages with selective repeat. [`machine`] is the sans-I/O state machine,
//! [`frame`] the wire maps, [`link`] the tokio task over any frame transport,
//! [`sim`] a deterministic lossy link for tests and benchmarks.
//!
//! # Semantics (both peers run the same machine)
//!
//! **Handshake.** Either side starts with a request `{a:"r", n:1, c:{t,m},
//! i}` carrying its own timeout `t` (ms), window `m` and a fresh random
//! connection id `i`; the answer is `n:2`, the confirmation `n:3`, each with
//! the sender's own offer, its own id `i` and the id it answers `p`.
//! Whoever learns the other's offer uses `max` of the timeouts and `min` of
//! the windows, so both agree without a further round. The requester is up
//! when the ack arrives (and sends ack2); the answerer when ack2 arrives.
//! When both request at once, each answers the other's request (keeping its
//! own id) and each goes up on the other's ack. Requests are repeated every
//! own `timeout`, acks every agreed timeout, each at most `retries` times,
//! then the link is declared down. Offers below window 4 or outside
//! 1 ms..1 h are refused with a closing frame naming why. An idle or down
//! side answers requests (passive open) but sends none.
//!
//! **Connection ids tell echoes from new peers.** A side draws a new id for
//! every handshake it starts ([`Machine::connect`]) or answers from idle,
//! down or up. A request whose id is the current peer's (after that
//! handshake completed) or one of the peer's last few ids is a duplicate or
//! late copy: ignored, whenever it arrives. A request with any other id is a
//! new peer (a restarted node, the next one-shot `moat` command) and is
//! answered at once, also while up. An ack or ack2 whose `p` is not our
//! current id answers an earlier request of ours (before a local reset) and
//! is ignored; so is a closing frame whose `p` names another of our ids.
//! No rule depends on time.
//!
//! **Reset while up.** A new peer's request while up means the peer
//! restarted: everything queued or in flight is discarded and reported as
//! [`Event::Reset`] with the count (they may or may not have arrived, so the
//! requests waiting on them must fail), sequence state restarts at 0 on both
//! sides, and the handshake runs again. [`Machine::connect`] while up is the
//! same reset started locally; it sends a closing frame before the request,
//! for a peer from before connection ids.
//!
//! **Peers without connection ids** (the handshake before them) send frames
//! without `i` and `p` and ignore ours. Their frames are taken as they come:
//! a request without an id is a new peer (so a duplicated one resets the
//! link), an ack without `p` answers our current request, a closing frame
//! without `p` closes. Such a peer still holds off requests for half a
//! timeout after its own handshake (its old rule), so a back-to-back client
//! may wait one retransmission with it; updating its runtime removes that.
//!
//! **Sequence numbers** count messages from 0 after each handshake and travel
//! modulo the agreed window `m`. The receiver accepts up to `m/2` ahead of
//! the next expected number (the protocol's cap on unacknowledged messages,
//! which a peer may use) and treats the rest as duplicates. We keep at most
//! `(m-1)/2` unacknowledged ourselves (3 of the default 8): on a link that
//! keeps order `m/2` would do, the spare number keeps a frame that was
//! overtaken by one newer frame, or a late copy, from being taken for a new
//! one.
//!
//! **Data/ack frames** `{s, r, x, d}`: `r` is the next sequence number the
//! sender expects (everything before arrived and was delivered), `x` lists
//! the numbers after `r` it received and holds (ascending; omitted when
//! empty). With `d` (a message), `s` is that message's number. A pure ack
//! (no `d`) has `s` = the number the sender's next new message will get; it
//! is informational. Every data frame carries the current `r`/`x`, so an ack
//! rides along with outgoing data when there is any.
//!
//! **When acks are sent.** Every received data frame (new, buffered or a
//! duplicate) is acknowledged at once: by the data frames it lets us send,
//! else by one pure ack. Acks are never acknowledged. No delayed coalescing:
//! serial links are slow enough that a frame per message is the cost anyway,
//! and an immediate ack keeps the sender's window moving.
//!
//! **Retransmission.** Each unacknowledged message has its own timer: after
//! the agreed timeout it is sent again, unless the peer listed it in `x`.
//! `x` also drives fast selective retransmit: a hole below a number listed
//! in `x` whose last transmission left before that frame's first one was
//! lost (the link keeps order), so it is resent at once. A message
//! transmitted `1 + retries` times without acknowledgement takes the link
//! down: a closing frame tells the peer, queued and in-flight messages are
//! reported lost in [`Event::Down`]. Nothing comes back up by itself; the
//! owner calls `connect` again (or the peer's request arrives).
//!
//! **Stale frames.** Acks whose `r` or `x` do not fit what is in flight are
//! ignored whole (a stale ack could otherwise acknowledge a lost message).
//! Data behind `r` (or beyond the receive window) is a duplicate: acked, not
//! delivered. Data arriving before the handshake completes belongs to an old
//! epoch and is ignored; its sender retransmits it. This is exact for links
//! that keep order (serial does), with duplicates, and with frames overtaken
//! by one newer frame. No scheme with numbers modulo `m` can tell a frame
//! delayed past many newer ones from a new one.

pub mod frame;
pub mod link;
pub mod machine;
pub mod sim;

pub use frame::{Frame, FrameError, Params, ResetStep, WireSeq};
pub use link::{spawn, LinkError, LinkEvent, LinkHandle};
pub use machine::{Config, ConfigError, Event, LinkDown, LinkState, Machine, Stats};
