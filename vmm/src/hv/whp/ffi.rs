//! The Windows Hypervisor Platform calls this backend makes, as safe wrappers. Every
//! `unsafe` call's soundness is argued here; the backend holds no `unsafe` of its own except
//! reading the exit-context unions, which it documents where it does.
//!
//! Types come from the `windows` crate; the functions are resolved at run time from
//! WinHvPlatform.dll and WinHvEmulation.dll (`LoadLibraryExW` + `GetProcAddress`) rather than
//! linked: those DLLs exist only when the optional "Windows Hypervisor Platform" feature is
//! on, and a linked import would stop the whole program from starting without it, where vmctl
//! must instead report it and fall back to the qemu engine.

use std::ffi::c_void;
use std::mem::size_of;
use std::sync::OnceLock;

use windows::core::{w, HRESULT, PCSTR, PCWSTR};
use windows::Win32::Foundation::{E_FAIL, HMODULE, S_OK};
use windows::Win32::System::Hypervisor::*;
use windows::Win32::System::LibraryLoader::{
    GetProcAddress, LoadLibraryExW, LOAD_LIBRARY_SEARCH_SYSTEM32,
};

use crate::hv::HvError;

macro_rules! whp_api {
    ($($dll:ident $name:ident($($arg:ty),*);)*) => {
        /// The WHP entry points, resolved from the system DLLs.
        #[allow(non_snake_case)]
        struct Api {
            $($name: unsafe extern "system" fn($($arg),*) -> HRESULT,)*
        }

        impl Api {
            fn load() -> Result<Api, String> {
                let platform = load_library(w!("WinHvPlatform.dll"), "WinHvPlatform.dll")?;
                let emulation = load_library(w!("WinHvEmulation.dll"), "WinHvEmulation.dll")?;
                let module = |dll: &str| if dll == "platform" { platform } else { emulation };
                Ok(Api {
                    $($name: {
                        let name = concat!(stringify!($name), "\0");
                        // SAFETY: the module handle is live (never freed) and `name` is a
                        // NUL-terminated ASCII string.
                        let p = unsafe {
                            GetProcAddress(module(stringify!($dll)), PCSTR::from_raw(name.as_ptr()))
                        }
                        .ok_or_else(|| format!("{} has no {}", stringify!($dll), stringify!($name)))?;
                        // SAFETY: `p` is the DLL's export of that name, whose prototype
                        // (WinHvPlatform.h / WinHvEmulation.h, as the windows crate declares
                        // it) is exactly this function pointer type.
                        unsafe {
                            std::mem::transmute::<
                                unsafe extern "system" fn() -> isize,
                                unsafe extern "system" fn($($arg),*) -> HRESULT,
                            >(p)
                        }
                    },)*
                })
            }
        }
    };
}

whp_api! {
    platform WHvGetCapability(WHV_CAPABILITY_CODE, *mut c_void, u32, *mut u32);
    platform WHvCreatePartition(*mut WHV_PARTITION_HANDLE);
    platform WHvSetPartitionProperty(WHV_PARTITION_HANDLE, WHV_PARTITION_PROPERTY_CODE, *const c_void, u32);
    platform WHvSetupPartition(WHV_PARTITION_HANDLE);
    platform WHvDeletePartition(WHV_PARTITION_HANDLE);
    platform WHvMapGpaRange(WHV_PARTITION_HANDLE, *const c_void, u64, u64, WHV_MAP_GPA_RANGE_FLAGS);
    platform WHvCreateVirtualProcessor(WHV_PARTITION_HANDLE, u32, u32);
    platform WHvDeleteVirtualProcessor(WHV_PARTITION_HANDLE, u32);
    platform WHvRunVirtualProcessor(WHV_PARTITION_HANDLE, u32, *mut c_void, u32);
    platform WHvCancelRunVirtualProcessor(WHV_PARTITION_HANDLE, u32, u32);
    platform WHvGetVirtualProcessorRegisters(WHV_PARTITION_HANDLE, u32, *const WHV_REGISTER_NAME, u32, *mut WHV_REGISTER_VALUE);
    platform WHvSetVirtualProcessorRegisters(WHV_PARTITION_HANDLE, u32, *const WHV_REGISTER_NAME, u32, *const WHV_REGISTER_VALUE);
    platform WHvRequestInterrupt(WHV_PARTITION_HANDLE, *const WHV_INTERRUPT_CONTROL, u32);
    platform WHvTranslateGva(WHV_PARTITION_HANDLE, u32, u64, WHV_TRANSLATE_GVA_FLAGS, *mut WHV_TRANSLATE_GVA_RESULT, *mut u64);
    emulation WHvEmulatorCreateEmulator(*const WHV_EMULATOR_CALLBACKS, *mut *mut c_void);
    emulation WHvEmulatorTryMmioEmulation(*const c_void, *const c_void, *const WHV_VP_EXIT_CONTEXT, *const WHV_MEMORY_ACCESS_CONTEXT, *mut WHV_EMULATOR_STATUS);
    emulation WHvEmulatorDestroyEmulator(*const c_void);
}

fn load_library(file: PCWSTR, name: &str) -> Result<HMODULE, String> {
    // SAFETY: `file` is a static NUL-terminated wide string; searching System32 only avoids
    // loading a planted DLL from the current directory.
    unsafe { LoadLibraryExW(file, None, LOAD_LIBRARY_SEARCH_SYSTEM32) }
        .map_err(|e| format!("cannot load {name}: {e}"))
}

/// The WHP functions, or why they are not there.
fn api() -> Result<&'static Api, HvError> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(Api::load).as_ref().map_err(|why| {
        HvError::Open {
            path: "WinHvPlatform.dll".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{why} (enable the optional Windows feature 'Windows Hypervisor Platform' and reboot)"
                ),
            ),
        }
    })
}

fn op(name: &'static str, e: windows::core::Error) -> HvError {
    HvError::op(name, std::io::Error::other(e))
}

/// `WHV_CAPABILITY_FEATURES.LocalApicEmulation`.
const FEATURE_LOCAL_APIC_EMULATION: u64 = 1 << 1;

/// True when the Windows Hypervisor Platform is enabled and a hypervisor runs.
pub fn hypervisor_present() -> Result<bool, HvError> {
    let mut cap = WHV_CAPABILITY::default();
    // SAFETY: the buffer is a live WHV_CAPABILITY of the size passed; the call writes at most
    // that many bytes.
    unsafe {
        (api()?.WHvGetCapability)(
            WHvCapabilityCodeHypervisorPresent,
            (&mut cap as *mut WHV_CAPABILITY).cast(),
            size_of::<WHV_CAPABILITY>() as u32,
            std::ptr::null_mut(),
        )
    }
    .ok()
    .map_err(|e| op("WHvGetCapability(HypervisorPresent)", e))?;
    // SAFETY: HypervisorPresent is the member the capability code above fills.
    Ok(unsafe { cap.HypervisorPresent }.as_bool())
}

/// True when WHP can emulate local APICs (Windows 10 1809 and later).
pub fn has_local_apic_emulation() -> Result<bool, HvError> {
    let mut cap = WHV_CAPABILITY::default();
    // SAFETY: as in `hypervisor_present`.
    unsafe {
        (api()?.WHvGetCapability)(
            WHvCapabilityCodeFeatures,
            (&mut cap as *mut WHV_CAPABILITY).cast(),
            size_of::<WHV_CAPABILITY>() as u32,
            std::ptr::null_mut(),
        )
    }
    .ok()
    .map_err(|e| op("WHvGetCapability(Features)", e))?;
    // SAFETY: Features is the member the Features capability code fills.
    let bits = unsafe { cap.Features.AsUINT64 };
    Ok(bits & FEATURE_LOCAL_APIC_EMULATION != 0)
}

/// The Hyper-V enlightenments (synthetic processor features) the host offers, when it can
/// say (Windows 10 2004 and later).
fn synthetic_features() -> Option<WHV_SYNTHETIC_PROCESSOR_FEATURES_BANKS> {
    let mut cap = WHV_CAPABILITY::default();
    // SAFETY: as in `hypervisor_present`.
    unsafe {
        (api().ok()?.WHvGetCapability)(
            WHvCapabilityCodeSyntheticProcessorFeaturesBanks,
            (&mut cap as *mut WHV_CAPABILITY).cast(),
            size_of::<WHV_CAPABILITY>() as u32,
            std::ptr::null_mut(),
        )
    }
    .ok()
    .ok()?;
    // SAFETY: SyntheticProcessorFeaturesBanks is the member this capability code fills.
    Some(unsafe { cap.SyntheticProcessorFeaturesBanks })
}

/// A WHP partition (a VM); deleted on drop.
pub struct Partition {
    api: &'static Api,
    handle: WHV_PARTITION_HANDLE,
}

impl Partition {
    /// Creates and sets up a partition for up to `processors` vCPUs with WHP's local APIC
    /// emulation and every Hyper-V enlightenment the host offers (so a Linux guest learns the
    /// TSC and APIC timer frequencies from Hyper-V MSRs and needs no PIT calibration).
    pub fn create(processors: u32) -> Result<Self, HvError> {
        let api = api()?;
        let mut handle = WHV_PARTITION_HANDLE::default();
        // SAFETY: the out-pointer is a live local; the new handle is wrapped at once so Drop
        // deletes it on every later error.
        unsafe { (api.WHvCreatePartition)(&mut handle) }
            .ok()
            .map_err(|e| op("WHvCreatePartition", e))?;
        let p = Partition { api, handle };
        p.set_property(
            WHvPartitionPropertyCodeProcessorCount,
            &processors,
            "WHvSetPartitionProperty(ProcessorCount)",
        )?;
        p.set_property(
            WHvPartitionPropertyCodeLocalApicEmulationMode,
            &WHvX64LocalApicEmulationModeXApic,
            "WHvSetPartitionProperty(LocalApicEmulationMode)",
        )?;
        if let Some(banks) = synthetic_features() {
            p.set_property(
                WHvPartitionPropertyCodeSyntheticProcessorFeaturesBanks,
                &banks,
                "WHvSetPartitionProperty(SyntheticProcessorFeaturesBanks)",
            )?;
        }
        // SAFETY: the handle is live; properties are set, as setup requires.
        unsafe { (p.api.WHvSetupPartition)(p.handle) }
            .ok()
            .map_err(|e| op("WHvSetupPartition", e))?;
        Ok(p)
    }

    fn set_property<T>(
        &self,
        code: WHV_PARTITION_PROPERTY_CODE,
        value: &T,
        name: &'static str,
    ) -> Result<(), HvError> {
        // SAFETY: `value` is a live T whose layout is the one WHP defines for `code` (callers
        // pass the matching WHV_* type); WHP only reads size_of::<T>() bytes.
        unsafe {
            (self.api.WHvSetPartitionProperty)(
                self.handle,
                code,
                (value as *const T).cast(),
                size_of::<T>() as u32,
            )
        }
        .ok()
        .map_err(|e| op(name, e))
    }

    /// Maps host memory into the guest, read/write/execute.
    ///
    /// # Safety
    /// `host..host + size` must stay mapped for as long as the partition exists.
    pub unsafe fn map(&self, host: *const u8, gpa: u64, size: u64) -> Result<(), HvError> {
        let flags = WHV_MAP_GPA_RANGE_FLAGS(
            WHvMapGpaRangeFlagRead.0 | WHvMapGpaRangeFlagWrite.0 | WHvMapGpaRangeFlagExecute.0,
        );
        // SAFETY: the caller guarantees the host range outlives the partition.
        unsafe { (self.api.WHvMapGpaRange)(self.handle, host.cast(), gpa, size, flags) }
            .ok()
            .map_err(|e| op("WHvMapGpaRange", e))
    }

    pub fn create_vp(&self, index: u32) -> Result<(), HvError> {
        // SAFETY: plain values on a live partition.
        unsafe { (self.api.WHvCreateVirtualProcessor)(self.handle, index, 0) }
            .ok()
            .map_err(|e| op("WHvCreateVirtualProcessor", e))
    }

    pub fn delete_vp(&self, index: u32) {
        // SAFETY: plain values on a live partition; deleting an absent VP only fails.
        let _ = unsafe { (self.api.WHvDeleteVirtualProcessor)(self.handle, index) };
    }

    /// Runs VP `index` until its next exit, described in `ctx`.
    pub fn run_vp(&self, index: u32, ctx: &mut WHV_RUN_VP_EXIT_CONTEXT) -> Result<(), HvError> {
        // SAFETY: `ctx` is a live, writable exit context of the size passed.
        unsafe {
            (self.api.WHvRunVirtualProcessor)(
                self.handle,
                index,
                (ctx as *mut WHV_RUN_VP_EXIT_CONTEXT).cast(),
                size_of::<WHV_RUN_VP_EXIT_CONTEXT>() as u32,
            )
        }
        .ok()
        .map_err(|e| op("WHvRunVirtualProcessor", e))
    }

    /// Makes a running `run_vp(index)` return with a Canceled exit; any thread may call it.
    pub fn cancel_vp(&self, index: u32) {
        // SAFETY: plain values on a live partition.
        let _ = unsafe { (self.api.WHvCancelRunVirtualProcessor)(self.handle, index, 0) };
    }

    pub fn get_regs(
        &self,
        index: u32,
        names: &[WHV_REGISTER_NAME],
        values: &mut [WHV_REGISTER_VALUE],
    ) -> Result<(), HvError> {
        let n = names.len().min(values.len());
        // SAFETY: both arrays hold at least `n` elements; WHP writes `n` values.
        unsafe {
            (self.api.WHvGetVirtualProcessorRegisters)(
                self.handle,
                index,
                names.as_ptr(),
                n as u32,
                values.as_mut_ptr(),
            )
        }
        .ok()
        .map_err(|e| op("WHvGetVirtualProcessorRegisters", e))
    }

    pub fn set_regs(
        &self,
        index: u32,
        names: &[WHV_REGISTER_NAME],
        values: &[WHV_REGISTER_VALUE],
    ) -> Result<(), HvError> {
        let n = names.len().min(values.len());
        // SAFETY: both arrays hold at least `n` elements; WHP only reads them.
        unsafe {
            (self.api.WHvSetVirtualProcessorRegisters)(
                self.handle,
                index,
                names.as_ptr(),
                n as u32,
                values.as_ptr(),
            )
        }
        .ok()
        .map_err(|e| op("WHvSetVirtualProcessorRegisters", e))
    }

    /// Sends an interrupt to the emulated local APICs.
    pub fn request_interrupt(&self, ctl: &WHV_INTERRUPT_CONTROL) -> Result<(), HvError> {
        // SAFETY: `ctl` is a live WHV_INTERRUPT_CONTROL of the size passed.
        unsafe {
            (self.api.WHvRequestInterrupt)(
                self.handle,
                ctl,
                size_of::<WHV_INTERRUPT_CONTROL>() as u32,
            )
        }
        .ok()
        .map_err(|e| op("WHvRequestInterrupt", e))
    }

    fn translate_gva(
        &self,
        index: u32,
        gva: u64,
        flags: WHV_TRANSLATE_GVA_FLAGS,
    ) -> Result<(WHV_TRANSLATE_GVA_RESULT_CODE, u64), HvError> {
        let mut result = WHV_TRANSLATE_GVA_RESULT::default();
        let mut gpa = 0u64;
        // SAFETY: both out-pointers are live locals of the types WHP writes.
        unsafe {
            (self.api.WHvTranslateGva)(self.handle, index, gva, flags, &mut result, &mut gpa)
        }
        .ok()
        .map_err(|e| op("WHvTranslateGva", e))?;
        Ok((result.ResultCode, gpa))
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        // SAFETY: we own the handle and delete it once; VPs are deleted with it.
        let _ = unsafe { (self.api.WHvDeletePartition)(self.handle) };
    }
}

/// What the instruction emulator asks of the VMM while it emulates one instruction.
pub trait EmulatorHost {
    /// A guest-physical memory access of `data.len()` bytes (write: `data` holds the bytes;
    /// read: fill it). False fails the emulation.
    fn memory(&mut self, gpa: u64, write: bool, data: &mut [u8]) -> bool;
    fn partition(&self) -> &Partition;
    fn vp_index(&self) -> u32;
    /// Whether register writes are applied (false while only probing what an instruction
    /// accesses, so it can be emulated again once the data is known).
    fn commit_registers(&self) -> bool;
}

/// The host behind the emulator callbacks' `context`.
type HostRef<'a> = &'a mut dyn EmulatorHost;

/// # Safety
/// `context` must be the `*mut HostRef` that `Emulator::try_mmio` passed, live for the call.
unsafe fn host<'a>(context: *const c_void) -> &'a mut dyn EmulatorHost {
    // SAFETY: guaranteed by the caller (the emulator hands back the context we gave it,
    // synchronously, while `try_mmio` holds the host borrowed).
    unsafe { &mut **(context as *mut HostRef<'a>) }
}

fn hr(ok: bool) -> HRESULT {
    if ok {
        S_OK
    } else {
        E_FAIL
    }
}

unsafe extern "system" fn io_port_cb(
    context: *const c_void,
    access: *mut WHV_EMULATOR_IO_ACCESS_INFO,
) -> HRESULT {
    // Only MMIO is emulated (string port I/O exits are refused before reaching the
    // emulator), so a port access here is unexpected: fail the emulation.
    let _ = (context, access);
    E_FAIL
}

unsafe extern "system" fn memory_cb(
    context: *const c_void,
    access: *mut WHV_EMULATOR_MEMORY_ACCESS_INFO,
) -> HRESULT {
    // SAFETY: the emulator passes back our context and a live access record.
    let (h, a) = unsafe { (host(context), &mut *access) };
    let n = usize::from(a.AccessSize).min(a.Data.len());
    hr(h.memory(a.GpaAddress, a.Direction == 1, &mut a.Data[..n]))
}

unsafe extern "system" fn get_regs_cb(
    context: *const c_void,
    names: *const WHV_REGISTER_NAME,
    count: u32,
    values: *mut WHV_REGISTER_VALUE,
) -> HRESULT {
    // SAFETY: the emulator passes back our context and two arrays of `count` elements.
    let (h, names, values) = unsafe {
        (
            host(context),
            std::slice::from_raw_parts(names, count as usize),
            std::slice::from_raw_parts_mut(values, count as usize),
        )
    };
    hr(h.partition().get_regs(h.vp_index(), names, values).is_ok())
}

unsafe extern "system" fn set_regs_cb(
    context: *const c_void,
    names: *const WHV_REGISTER_NAME,
    count: u32,
    values: *const WHV_REGISTER_VALUE,
) -> HRESULT {
    // SAFETY: the emulator passes back our context and two arrays of `count` elements.
    let (h, names, values) = unsafe {
        (
            host(context),
            std::slice::from_raw_parts(names, count as usize),
            std::slice::from_raw_parts(values, count as usize),
        )
    };
    if !h.commit_registers() {
        return S_OK;
    }
    hr(h.partition().set_regs(h.vp_index(), names, values).is_ok())
}

unsafe extern "system" fn translate_cb(
    context: *const c_void,
    gva: u64,
    flags: WHV_TRANSLATE_GVA_FLAGS,
    result: *mut WHV_TRANSLATE_GVA_RESULT_CODE,
    gpa: *mut u64,
) -> HRESULT {
    // SAFETY: the emulator passes back our context and two live out-pointers.
    let h = unsafe { host(context) };
    match h.partition().translate_gva(h.vp_index(), gva, flags) {
        Ok((code, addr)) => {
            // SAFETY: as above.
            unsafe {
                *result = code;
                *gpa = addr;
            }
            S_OK
        }
        Err(_) => E_FAIL,
    }
}

/// WinHvEmulation's x86 instruction emulator, for MMIO exits.
pub struct Emulator {
    api: &'static Api,
    handle: *mut c_void,
}

// SAFETY: the emulator handle is an opaque object with no thread affinity; it is used by one
// vCPU at a time (`&mut self` on every use).
unsafe impl Send for Emulator {}

impl Emulator {
    pub fn new() -> Result<Self, HvError> {
        let callbacks = WHV_EMULATOR_CALLBACKS {
            Size: size_of::<WHV_EMULATOR_CALLBACKS>() as u32,
            Reserved: 0,
            WHvEmulatorIoPortCallback: Some(io_port_cb),
            WHvEmulatorMemoryCallback: Some(memory_cb),
            WHvEmulatorGetVirtualProcessorRegisters: Some(get_regs_cb),
            WHvEmulatorSetVirtualProcessorRegisters: Some(set_regs_cb),
            WHvEmulatorTranslateGvaPage: Some(translate_cb),
        };
        let mut handle: *mut c_void = std::ptr::null_mut();
        let api = api()?;
        // SAFETY: `callbacks` is complete and copied by the call; `handle` is a live local.
        unsafe { (api.WHvEmulatorCreateEmulator)(&callbacks, &mut handle) }
            .ok()
            .map_err(|e| op("WHvEmulatorCreateEmulator", e))?;
        Ok(Emulator { api, handle })
    }

    /// Emulates the instruction behind an MMIO exit; returns `WHV_EMULATOR_STATUS.AsUINT32`.
    pub fn try_mmio(
        &mut self,
        host: &mut dyn EmulatorHost,
        vp: &WHV_VP_EXIT_CONTEXT,
        access: &WHV_MEMORY_ACCESS_CONTEXT,
    ) -> Result<u32, HvError> {
        let mut h: HostRef<'_> = host;
        let context = (&mut h as *mut HostRef<'_>).cast::<c_void>();
        let mut status = WHV_EMULATOR_STATUS::default();
        // SAFETY: `context` points at `h`, which outlives this synchronous call; the
        // callbacks above cast it back to exactly that type. The exit records and the status
        // out-pointer are live.
        unsafe {
            (self.api.WHvEmulatorTryMmioEmulation)(self.handle, context, vp, access, &mut status)
        }
        .ok()
        .map_err(|e| op("WHvEmulatorTryMmioEmulation", e))?;
        // SAFETY: every bit pattern of the status union is a valid u32.
        Ok(unsafe { status.AsUINT32 })
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // SAFETY: we own the handle and destroy it once.
        let _ = unsafe { (self.api.WHvEmulatorDestroyEmulator)(self.handle) };
    }
}
