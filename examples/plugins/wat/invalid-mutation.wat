;; Misbehaving policy plugin: asks to set an environment variable named
;; "BAD=NAME", which no spec can hold: an invalid mutation.
;;
;; Canonical ABI layout of the result (returned by pointer):
;;   verdict @ 64:  u8 case (2 = mutate), list<edit> at +4 (ptr, len)
;;   edit    @ 128: u8 case (0 = set-env), env-var at +8: name (ptr, len), value (ptr, len)
;;   (edit has alignment 8 because resource-limit carries an s64)
(module
  (memory (export "memory") 2)
  (data (i32.const 256) "BAD=NAME")
  (data (i32.const 272) "x")
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
    (i32.store8 (i32.const 64) (i32.const 2))
    (i32.store (i32.const 68) (i32.const 128))
    (i32.store (i32.const 72) (i32.const 1))
    (i32.store8 (i32.const 128) (i32.const 0))
    (i32.store (i32.const 136) (i32.const 256))
    (i32.store (i32.const 140) (i32.const 8))
    (i32.store (i32.const 144) (i32.const 272))
    (i32.store (i32.const 148) (i32.const 1))
    (i32.const 64)))
