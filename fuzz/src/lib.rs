//! What Warren's fuzz targets share with the seed writer (`examples/seeds.rs`): how a target
//! reads its input, and how a seed is written so that the target reads it back exactly.
//!
//! - [`delivery`]: an AMQP delivery (properties, headers, body) for the `message` target.
//! - [`upload`]: a variant spec and an uploaded original for the `image` target.
//! - [`alloc`]: a global allocator that records the largest allocation and the peak, so the
//!   `image` target can hold decoding and rendering to the limits they promise.
//!
//! Inputs are read with [`arbitrary::Unstructured`], one tag byte choosing each field's shape,
//! so that random bytes still give mostly well-formed ids and known header names and the
//! fuzzer spends its time past the first `?`.

pub mod alloc;
pub mod delivery;
pub mod upload;

use arbitrary::{Result, Unstructured};

/// The next `N` bytes (zeros once the input has run out), for `from_be_bytes`.
fn be<const N: usize>(u: &mut Unstructured<'_>) -> Result<[u8; N]> {
    let mut bytes = [0; N];
    u.fill_buffer(&mut bytes)?;
    Ok(bytes)
}

fn byte(u: &mut Unstructured<'_>) -> Result<u8> {
    u.arbitrary()
}
