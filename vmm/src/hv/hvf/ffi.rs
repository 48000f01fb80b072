//! Bindings to Hypervisor.framework (arm64), by hand: the few calls this backend makes, with
//! the framework's C types. Written here rather than taken from a crate because the GIC calls
//! (macOS 15+) must be resolved at run time with `dlsym`, so the binary still starts on older
//! macOS and reports the missing GIC as an error instead of failing to load.
//!
//! Every wrapper documents why its call is sound; callers get `Result`s.
#![allow(non_camel_case_types)]

use std::ffi::{c_void, CStr};
use std::sync::OnceLock;

use crate::hv::HvError;

pub type hv_return_t = i32;
pub type hv_vcpu_t = u64;
pub type hv_ipa_t = u64;
pub type hv_reg_t = u32;
pub type hv_sys_reg_t = u16;
type os_object_t = *mut c_void;

pub const HV_SUCCESS: hv_return_t = 0;
pub const HV_MEMORY_READ: u64 = 1 << 0;
pub const HV_MEMORY_WRITE: u64 = 1 << 1;
pub const HV_MEMORY_EXEC: u64 = 1 << 2;

pub const HV_EXIT_REASON_CANCELED: u32 = 0;
pub const HV_EXIT_REASON_EXCEPTION: u32 = 1;
pub const HV_EXIT_REASON_VTIMER_ACTIVATED: u32 = 2;

pub const HV_REG_X0: hv_reg_t = 0;
pub const HV_REG_PC: hv_reg_t = 31;
pub const HV_REG_CPSR: hv_reg_t = 34;
/// The framework's `hv_sys_reg_t` encodings (op0 << 14 | op1 << 11 | CRn << 7 | CRm << 3 | op2).
pub const HV_SYS_REG_MPIDR_EL1: hv_sys_reg_t = 0xc005;
pub const HV_SYS_REG_SCTLR_EL1: hv_sys_reg_t = 0xc080;
pub const HV_SYS_REG_CNTV_CTL_EL0: hv_sys_reg_t = 0xdf19;
pub const HV_SYS_REG_CNTV_CVAL_EL0: hv_sys_reg_t = 0xdf1a;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct hv_vcpu_exit_exception_t {
    pub syndrome: u64,
    pub virtual_address: u64,
    pub physical_address: hv_ipa_t,
}

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct hv_vcpu_exit_t {
    pub reason: u32,
    pub exception: hv_vcpu_exit_exception_t,
}

#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct mach_timebase_info_data_t {
    numer: u32,
    denom: u32,
}

#[link(name = "Hypervisor", kind = "framework")]
extern "C" {
    fn hv_vm_create(config: os_object_t) -> hv_return_t;
    fn hv_vm_destroy() -> hv_return_t;
    fn hv_vm_map(addr: *mut c_void, ipa: hv_ipa_t, size: usize, flags: u64) -> hv_return_t;
    fn hv_vcpu_create(
        vcpu: *mut hv_vcpu_t,
        exit: *mut *const hv_vcpu_exit_t,
        config: os_object_t,
    ) -> hv_return_t;
    fn hv_vcpu_destroy(vcpu: hv_vcpu_t) -> hv_return_t;
    fn hv_vcpu_run(vcpu: hv_vcpu_t) -> hv_return_t;
    fn hv_vcpus_exit(vcpus: *const hv_vcpu_t, count: u32) -> hv_return_t;
    fn hv_vcpu_get_reg(vcpu: hv_vcpu_t, reg: hv_reg_t, value: *mut u64) -> hv_return_t;
    fn hv_vcpu_set_reg(vcpu: hv_vcpu_t, reg: hv_reg_t, value: u64) -> hv_return_t;
    fn hv_vcpu_get_sys_reg(vcpu: hv_vcpu_t, reg: hv_sys_reg_t, value: *mut u64) -> hv_return_t;
    fn hv_vcpu_set_sys_reg(vcpu: hv_vcpu_t, reg: hv_sys_reg_t, value: u64) -> hv_return_t;
    fn hv_vcpu_set_vtimer_mask(vcpu: hv_vcpu_t, masked: bool) -> hv_return_t;
    fn hv_vcpu_get_vtimer_offset(vcpu: hv_vcpu_t, offset: *mut u64) -> hv_return_t;
}

extern "C" {
    fn os_release(object: *mut c_void);
    fn mach_absolute_time() -> u64;
    fn mach_timebase_info(info: *mut mach_timebase_info_data_t) -> i32;
}

fn check(op: &'static str, r: hv_return_t) -> Result<(), HvError> {
    if r == HV_SUCCESS {
        Ok(())
    } else {
        Err(HvError::op(op, std::io::Error::other(describe(r))))
    }
}

/// The framework's error codes (hv_error.h), for messages.
fn describe(r: hv_return_t) -> String {
    let what = match r as u32 {
        0xfae9_4001 => "HV_ERROR",
        0xfae9_4002 => "HV_BUSY",
        0xfae9_4003 => "HV_BAD_ARGUMENT",
        0xfae9_4004 => "HV_ILLEGAL_GUEST_STATE",
        0xfae9_4005 => "HV_NO_RESOURCES",
        0xfae9_4006 => "HV_NO_DEVICE",
        0xfae9_4007 => "HV_DENIED (is the binary signed with com.apple.security.hypervisor?)",
        0xfae9_400f => "HV_UNSUPPORTED",
        _ => "unknown error",
    };
    format!("{what} ({r:#x})")
}

/// Creates the process's VM with the default configuration (36-bit IPA space).
pub fn vm_create() -> Result<(), HvError> {
    // SAFETY: a null configuration asks for the defaults; the call has no other inputs.
    check("hv_vm_create", unsafe {
        hv_vm_create(std::ptr::null_mut())
    })
}

/// Destroys the process's VM.
pub fn vm_destroy() {
    // SAFETY: called once, when the last vCPU is gone (the Vm is dropped after its vCPUs).
    let _ = unsafe { hv_vm_destroy() };
}

/// Maps `size` bytes of host memory at `host` into the guest at `ipa`, RWX.
///
/// # Safety
/// `host..host + size` must stay mapped for as long as the VM exists.
pub unsafe fn vm_map(host: *mut u8, ipa: u64, size: usize) -> Result<(), HvError> {
    let flags = HV_MEMORY_READ | HV_MEMORY_WRITE | HV_MEMORY_EXEC;
    // SAFETY: the caller guarantees the host range outlives the VM.
    check("hv_vm_map", unsafe {
        hv_vm_map(host.cast(), ipa, size, flags)
    })
}

/// Creates a vCPU owned by the calling thread; returns it and its exit-information record.
pub fn vcpu_create() -> Result<(hv_vcpu_t, *const hv_vcpu_exit_t), HvError> {
    let mut vcpu: hv_vcpu_t = 0;
    let mut exit: *const hv_vcpu_exit_t = std::ptr::null();
    // SAFETY: both out-pointers point at live locals; a null config asks for defaults.
    check("hv_vcpu_create", unsafe {
        hv_vcpu_create(&mut vcpu, &mut exit, std::ptr::null_mut())
    })?;
    if exit.is_null() {
        return Err(HvError::op(
            "hv_vcpu_create",
            std::io::Error::other("no exit record returned"),
        ));
    }
    Ok((vcpu, exit))
}

/// Destroys a vCPU; must run on the thread that created it.
pub fn vcpu_destroy(vcpu: hv_vcpu_t) {
    // SAFETY: the caller is the owning thread (the vCPU is destroyed on drop, on that thread).
    let _ = unsafe { hv_vcpu_destroy(vcpu) };
}

/// Runs the vCPU until its next exit; the exit record is then valid.
pub fn vcpu_run(vcpu: hv_vcpu_t) -> Result<(), HvError> {
    // SAFETY: `vcpu` was created by this thread and is not destroyed.
    check("hv_vcpu_run", unsafe { hv_vcpu_run(vcpu) })
}

/// Reads the exit record `exit` after `vcpu_run`.
pub fn read_exit(exit: *const hv_vcpu_exit_t) -> hv_vcpu_exit_t {
    // SAFETY: the framework owns the record for the vCPU's lifetime and only writes it during
    // hv_vcpu_run on this same thread; it is non-null (checked at creation) and aligned.
    unsafe { *exit }
}

/// Forces `vcpu` out of `hv_vcpu_run`; callable from any thread.
pub fn vcpus_exit(vcpu: hv_vcpu_t) {
    // SAFETY: reads one hv_vcpu_t from a live local; the framework accepts any thread, and
    // a vCPU that already exited makes the call a no-op.
    let _ = unsafe { hv_vcpus_exit(&vcpu, 1) };
}

pub fn get_reg(vcpu: hv_vcpu_t, reg: hv_reg_t) -> Result<u64, HvError> {
    let mut v = 0;
    // SAFETY: the out-pointer is a live local; `vcpu` belongs to this thread.
    check("hv_vcpu_get_reg", unsafe {
        hv_vcpu_get_reg(vcpu, reg, &mut v)
    })?;
    Ok(v)
}

pub fn set_reg(vcpu: hv_vcpu_t, reg: hv_reg_t, value: u64) -> Result<(), HvError> {
    // SAFETY: plain values; `vcpu` belongs to this thread.
    check("hv_vcpu_set_reg", unsafe {
        hv_vcpu_set_reg(vcpu, reg, value)
    })
}

pub fn get_sys_reg(vcpu: hv_vcpu_t, reg: hv_sys_reg_t) -> Result<u64, HvError> {
    let mut v = 0;
    // SAFETY: the out-pointer is a live local; `vcpu` belongs to this thread.
    check("hv_vcpu_get_sys_reg", unsafe {
        hv_vcpu_get_sys_reg(vcpu, reg, &mut v)
    })?;
    Ok(v)
}

pub fn set_sys_reg(vcpu: hv_vcpu_t, reg: hv_sys_reg_t, value: u64) -> Result<(), HvError> {
    // SAFETY: plain values; `vcpu` belongs to this thread.
    check("hv_vcpu_set_sys_reg", unsafe {
        hv_vcpu_set_sys_reg(vcpu, reg, value)
    })
}

pub fn set_vtimer_mask(vcpu: hv_vcpu_t, masked: bool) -> Result<(), HvError> {
    // SAFETY: plain values; `vcpu` belongs to this thread.
    check("hv_vcpu_set_vtimer_mask", unsafe {
        hv_vcpu_set_vtimer_mask(vcpu, masked)
    })
}

pub fn vtimer_offset(vcpu: hv_vcpu_t) -> Result<u64, HvError> {
    let mut v = 0;
    // SAFETY: the out-pointer is a live local; `vcpu` belongs to this thread.
    check("hv_vcpu_get_vtimer_offset", unsafe {
        hv_vcpu_get_vtimer_offset(vcpu, &mut v)
    })?;
    Ok(v)
}

/// The host's counter (the guest's virtual counter plus the vCPU's vtimer offset).
pub fn host_counter() -> u64 {
    // SAFETY: no arguments, no preconditions.
    unsafe { mach_absolute_time() }
}

/// Converts host counter ticks to nanoseconds.
pub fn ticks_to_nanos(ticks: u64) -> u64 {
    static TIMEBASE: OnceLock<(u32, u32)> = OnceLock::new();
    let (numer, denom) = *TIMEBASE.get_or_init(|| {
        let mut info = mach_timebase_info_data_t::default();
        // SAFETY: the out-pointer is a live local of the C layout.
        let r = unsafe { mach_timebase_info(&mut info) };
        if r != 0 || info.denom == 0 {
            (1, 1)
        } else {
            (info.numer, info.denom)
        }
    });
    (u128::from(ticks) * u128::from(numer) / u128::from(denom)).min(u128::from(u64::MAX)) as u64
}

/// The in-framework GICv3 (macOS 15+), resolved at run time.
pub struct GicApi {
    config_create: unsafe extern "C" fn() -> os_object_t,
    set_distributor_base: unsafe extern "C" fn(os_object_t, hv_ipa_t) -> hv_return_t,
    set_redistributor_base: unsafe extern "C" fn(os_object_t, hv_ipa_t) -> hv_return_t,
    create: unsafe extern "C" fn(os_object_t) -> hv_return_t,
    set_spi: unsafe extern "C" fn(u32, bool) -> hv_return_t,
    distributor_size: unsafe extern "C" fn(*mut usize) -> hv_return_t,
    redistributor_size: unsafe extern "C" fn(*mut usize) -> hv_return_t,
    spi_range: unsafe extern "C" fn(*mut u32, *mut u32) -> hv_return_t,
}

fn sym(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: RTLD_DEFAULT searches the images already loaded (Hypervisor.framework is linked
    // above); `name` is NUL-terminated. The result is only a pointer; it is not called here.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

macro_rules! gic_fn {
    ($name:literal, $ty:ty) => {{
        let p = sym($name)?;
        // SAFETY: `p` is the address of the framework's exported function named `$name`,
        // whose C prototype (Hypervisor/hv_gic.h, macOS 15) is exactly `$ty`.
        unsafe { std::mem::transmute::<*mut c_void, $ty>(p) }
    }};
}

impl GicApi {
    /// The GIC calls, or None on macOS before 15.
    pub fn get() -> Option<&'static GicApi> {
        static API: OnceLock<Option<GicApi>> = OnceLock::new();
        API.get_or_init(|| {
            Some(GicApi {
                config_create: gic_fn!(
                    c"hv_gic_config_create",
                    unsafe extern "C" fn() -> os_object_t
                ),
                set_distributor_base: gic_fn!(
                    c"hv_gic_config_set_distributor_base",
                    unsafe extern "C" fn(os_object_t, hv_ipa_t) -> hv_return_t
                ),
                set_redistributor_base: gic_fn!(
                    c"hv_gic_config_set_redistributor_base",
                    unsafe extern "C" fn(os_object_t, hv_ipa_t) -> hv_return_t
                ),
                create: gic_fn!(
                    c"hv_gic_create",
                    unsafe extern "C" fn(os_object_t) -> hv_return_t
                ),
                set_spi: gic_fn!(
                    c"hv_gic_set_spi",
                    unsafe extern "C" fn(u32, bool) -> hv_return_t
                ),
                distributor_size: gic_fn!(
                    c"hv_gic_get_distributor_size",
                    unsafe extern "C" fn(*mut usize) -> hv_return_t
                ),
                redistributor_size: gic_fn!(
                    c"hv_gic_get_redistributor_size",
                    unsafe extern "C" fn(*mut usize) -> hv_return_t
                ),
                spi_range: gic_fn!(
                    c"hv_gic_get_spi_interrupt_range",
                    unsafe extern "C" fn(*mut u32, *mut u32) -> hv_return_t
                ),
            })
        })
        .as_ref()
    }

    /// (distributor size, per-vCPU redistributor size) the framework needs.
    pub fn sizes(&self) -> Result<(u64, u64), HvError> {
        let (mut d, mut r) = (0usize, 0usize);
        // SAFETY: out-pointers are live locals; the functions only write a size_t each.
        check("hv_gic_get_distributor_size", unsafe {
            (self.distributor_size)(&mut d)
        })?;
        // SAFETY: as above.
        check("hv_gic_get_redistributor_size", unsafe {
            (self.redistributor_size)(&mut r)
        })?;
        Ok((d as u64, r as u64))
    }

    /// (first SPI INTID, count) the framework's distributor supports.
    pub fn spi_range(&self) -> Result<(u32, u32), HvError> {
        let (mut base, mut count) = (0u32, 0u32);
        // SAFETY: out-pointers are live locals of type uint32_t.
        check("hv_gic_get_spi_interrupt_range", unsafe {
            (self.spi_range)(&mut base, &mut count)
        })?;
        Ok((base, count))
    }

    /// Creates the GIC with its distributor and redistributors at the given addresses. Must
    /// run after `vm_create` and before any vCPU exists.
    pub fn create(&self, distributor: u64, redistributor: u64) -> Result<(), HvError> {
        // SAFETY: no inputs; returns a new configuration object we own (or null).
        let cfg = unsafe { (self.config_create)() };
        if cfg.is_null() {
            return Err(HvError::op(
                "hv_gic_config_create",
                std::io::Error::other("no configuration object"),
            ));
        }
        // SAFETY: `cfg` is the live object created above; the addresses are plain values.
        let r = check("hv_gic_config_set_distributor_base", unsafe {
            (self.set_distributor_base)(cfg, distributor)
        })
        .and_then(|()| {
            // SAFETY: as above.
            check("hv_gic_config_set_redistributor_base", unsafe {
                (self.set_redistributor_base)(cfg, redistributor)
            })
        })
        .and_then(|()| {
            // SAFETY: `cfg` is a complete configuration; the framework copies what it needs.
            check("hv_gic_create", unsafe { (self.create)(cfg) })
        });
        // SAFETY: we own one reference to `cfg` (from config_create) and drop it exactly once.
        unsafe { os_release(cfg) };
        r
    }

    /// Sets the level of SPI `intid` (an interrupt ID, 32 and up).
    pub fn set_spi(&self, intid: u32, level: bool) -> Result<(), HvError> {
        // SAFETY: plain values; the framework checks the INTID against its range.
        check("hv_gic_set_spi", unsafe { (self.set_spi)(intid, level) })
    }
}
