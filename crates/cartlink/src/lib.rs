//! Cart serial protocol (work in progress).
#![no_std]
