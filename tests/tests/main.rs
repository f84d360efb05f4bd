//! End-to-end tests: one binary, one module per area.

mod bad_clients;
mod durability;
mod ingest;
mod layers;
