//! A cache hint the packer and the engine's core share: both walk data
//! that has left the cache (rows written a flush interval ago, the SKU
//! entities a part moves) and ask for it a little ahead of use.

/// Asks the CPU to bring the line that holds `value` into the cache,
/// without waiting for it. Only a hint: nothing is read that the program
/// sees, and on other architectures it does nothing.
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)] // one hint std has no safe wrapper for; see SAFETY
    // SAFETY: a prefetch only hints the cache: it reads nothing the
    // program sees and does not fault, and the address is a live value.
    unsafe {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
