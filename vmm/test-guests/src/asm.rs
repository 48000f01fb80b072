//! Entry point, exception/IRQ stubs and the real-mode AP trampoline.
//!
//! Hand-written assembly because these run before (or outside) any Rust calling
//! convention: the 64-bit entry from the VMM, interrupt frames and 16-bit real mode.

use core::arch::global_asm;

// The bzImage protected-mode image starts at 0x100000 and the VMM enters 64-bit
// bzImages at +0x200; the ELF entry (e_entry) is the same jump.
global_asm!(
    r#"
    .section .head, "ax"
    .code64
    .skip 0x200, 0
    .global head_entry
head_entry:
    jmp _start

    .section .text.entry, "ax"
    .global _start
_start:
    cli
    cld
    lea __stack_top(%rip), %rsp
    xor %ebp, %ebp
    mov %rsi, %rdi
    call guest_main
1:  cli
    hlt
    jmp 1b
"#,
    options(att_syntax)
);

// Exception stubs 0..31: push a dummy error code where the CPU pushes none, then the
// vector, and call `guest_exception(frame)`, which reports and resets (never returns).
global_asm!(
    r#"
    .macro EXC_NOERR n
    .section .text, "ax"
exc_stub_\n:
    push $0
    push $\n
    jmp exc_common
    .section .rodata.exc_table, "a"
    .quad exc_stub_\n
    .endm
    .macro EXC_ERR n
    .section .text, "ax"
exc_stub_\n:
    push $\n
    jmp exc_common
    .section .rodata.exc_table, "a"
    .quad exc_stub_\n
    .endm

    .section .rodata.exc_table, "a"
    .balign 8
    .global EXC_STUBS
EXC_STUBS:
    EXC_NOERR 0
    EXC_NOERR 1
    EXC_NOERR 2
    EXC_NOERR 3
    EXC_NOERR 4
    EXC_NOERR 5
    EXC_NOERR 6
    EXC_NOERR 7
    EXC_ERR 8
    EXC_NOERR 9
    EXC_ERR 10
    EXC_ERR 11
    EXC_ERR 12
    EXC_ERR 13
    EXC_ERR 14
    EXC_NOERR 15
    EXC_NOERR 16
    EXC_ERR 17
    EXC_NOERR 18
    EXC_NOERR 19
    EXC_NOERR 20
    EXC_ERR 21
    EXC_NOERR 22
    EXC_NOERR 23
    EXC_NOERR 24
    EXC_NOERR 25
    EXC_NOERR 26
    EXC_NOERR 27
    EXC_NOERR 28
    EXC_ERR 29
    EXC_ERR 30
    EXC_NOERR 31

    .section .text, "ax"
exc_common:
    mov %rsp, %rdi
    and $-16, %rsp
    call guest_exception
2:  cli
    hlt
    jmp 2b

    // Hardware interrupt stubs: save the caller-saved registers and call
    // `guest_irq(vector)`.
    .macro IRQ_STUB v
    .global irq_stub_\v
irq_stub_\v:
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    mov $\v, %edi
    call guest_irq
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    iretq
    .endm
    IRQ_STUB 64
    IRQ_STUB 65
    IRQ_STUB 66
    IRQ_STUB 255
"#,
    options(att_syntax)
);

// Deliberate faults: `int3_site` (a breakpoint at a known address) and `triple_fault`
// (an empty IDT, then #UD: #UD -> #GP -> #DF -> shutdown).
global_asm!(
    r#"
    .section .text, "ax"
    .global int3_site
int3_site:
    int3
    ret
    .global triple_fault
triple_fault:
    sub $16, %rsp
    movw $0, (%rsp)
    movq $0, 2(%rsp)
    lidt (%rsp)
    ud2
4:  jmp 4b
"#,
    options(att_syntax)
);

// The AP trampoline, copied to 0x10000 (SIPI vector 0x10: CS=0x1000, IP=0). Real mode
// straight to long mode with the BSP's page tables, then `ap_entry(index)` on its own
// stack. The BSP fills the mailbox (cr3, stacks, entry) before sending the SIPIs.
global_asm!(
    r#"
    .section .text, "ax"
    .balign 16
    .global TRAMP_START
    .global TRAMP_END
    .global TRAMP_CR3
    .global TRAMP_STACKS
    .global TRAMP_ENTRY
    .global TRAMP_COUNTER
    .code16
TRAMP_START:
    cli
    cld
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (TRAMP_GDTR - TRAMP_START)
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    movl (TRAMP_CR3 - TRAMP_START), %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax
    mov %eax, %cr0
    ljmpl $0x08, $(0x10000 + TRAMP_64 - TRAMP_START)
    .code64
TRAMP_64:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $1, %eax
    lock xadd %eax, (0x10000 + TRAMP_COUNTER - TRAMP_START)
    mov %eax, %edi
    mov %rax, %rcx
    inc %rcx
    shl $12, %rcx
    mov (0x10000 + TRAMP_STACKS - TRAMP_START), %rsp
    add %rcx, %rsp
    mov (0x10000 + TRAMP_ENTRY - TRAMP_START), %rax
    call *%rax
3:  cli
    hlt
    jmp 3b
    .balign 8
TRAMP_GDT:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
TRAMP_GDTR:
    .word 23
    .long 0x10000 + TRAMP_GDT - TRAMP_START
    .balign 8
TRAMP_CR3:
    .quad 0
TRAMP_STACKS:
    .quad 0
TRAMP_ENTRY:
    .quad 0
TRAMP_COUNTER:
    .long 0
    .balign 8
TRAMP_END:
"#,
    options(att_syntax)
);
