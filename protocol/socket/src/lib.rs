//! The QUIC UDP socket both ends of tillstream use: the server's
//! listening socket (`tillstream-engine`) and the devices' shared one
//! (`tillstream-client`). It is a crate of its own so that the engine
//! depends on the socket code, not on the device client.
//!
//! - [`udp`]: sockets with kernel buffers large enough for a fleet, and
//!   the payload a route carries;
//! - [`gso`]: the socket wrapper quinn sends through, whose segmentation
//!   offload batches stay under one IP datagram.
//!
//! Invariant: it knows no tillstream frame, message or identity; it
//! moves datagrams.

pub mod gso;
pub mod udp;
