;; Dirties 160 pages of its memory, each one page apart (160 disjoint dirty
;; regions, more than the 32 a slot reset scans at once), and denies if any of
;; them is not as the memory image has it: the first 8 hold "I" from the
;; image, the rest zero. With a fresh instance (and a slot reset to the image)
;; per call, it must allow every time.
;;   verdict @ 64: u8 case (0 = allow, 1 = deny), reason at +4 (ptr, len)
(module
  (memory (export "memory") 24)
  (data (i32.const 256) "state leaked from an earlier call")
  (data (i32.const 131072) "I")
  (data (i32.const 139264) "I")
  (data (i32.const 147456) "I")
  (data (i32.const 155648) "I")
  (data (i32.const 163840) "I")
  (data (i32.const 172032) "I")
  (data (i32.const 180224) "I")
  (data (i32.const 188416) "I")
  ;; Bump allocator the canonical ABI uses to pass the container view in.
  (global $heap (mut i32) (i32.const 4096))
  (func $realloc (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (i32.and
      (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
      (i32.sub (i32.const 0) (local.get $align))))
    (global.set $heap (i32.add (local.get $p) (local.get $size)))
    (block $ok
      (br_if $ok (i32.le_u (global.get $heap) (i32.shl (memory.size) (i32.const 16))))
      (drop (memory.grow (i32.add (i32.shr_u (i32.sub (global.get $heap) (i32.shl (memory.size) (i32.const 16))) (i32.const 16)) (i32.const 1)))))
    (local.get $p))
  (func (export "husk:plugin/policy-hooks@0.1.0#on-create") (param i32) (result i32)
    (local $k i32)
    (local $addr i32)
    (local $leaked i32)
    (loop $pages
      (local.set $addr (i32.add (i32.const 0x20000) (i32.mul (local.get $k) (i32.const 0x2000))))
      (if (i32.ne
            (i32.load8_u (local.get $addr))
            (select (i32.const 0x49) (i32.const 0) (i32.lt_u (local.get $k) (i32.const 8))))
        (then (local.set $leaked (i32.const 1))))
      (i32.store8 (local.get $addr) (i32.const 0x5a))
      (local.set $k (i32.add (local.get $k) (i32.const 1)))
      (br_if $pages (i32.lt_u (local.get $k) (i32.const 160))))
    (if (local.get $leaked)
      (then
        (i32.store8 (i32.const 64) (i32.const 1))
        (i32.store (i32.const 68) (i32.const 256))
        (i32.store (i32.const 72) (i32.const 33))
        (return (i32.const 64))))
    (i32.store8 (i32.const 64) (i32.const 0))
    (i32.const 64)))
