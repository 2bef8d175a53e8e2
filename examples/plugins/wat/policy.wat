;; The example policy, in hand-written WebAssembly text. Identical in
;; behaviour to the Rust, Python, C and JavaScript versions (see ../README.md):
;;
;; 1. deny a privileged container: CAP_SYS_ADMIN in any capability set;
;; 2. deny an environment variable that looks like a secret: its name
;;    contains SECRET, TOKEN or PASSWORD (ASCII, any case), or its value
;;    starts with AKIA, ghp_ or glpat-, or contains -----BEGIN;
;; 3. deny an image outside the config's `allowed-registries` (comma
;;    separated; unset or empty allows any);
;; 4. otherwise mutate: drop CAP_NET_RAW, add annotation io.husk.policy=checked.
;;
;; Canonical ABI layout of container-view (align 8), at the pointer on-create
;; receives: image.reference +8; env list +36 (env-var = name, value: 16
;; bytes); option<capabilities> tag +88, its five lists from +92, 8 bytes
;; apart (each a list of strings, 8 bytes per string).
;; The verdict is returned at 64: tag (0 allow, 1 deny, 2 mutate), payload +4.
;; An edit is 40 bytes (align 8): tag, payload at +8.
;; Constants live at 1024..4096, the bump heap above 4096.
(module
  (import "husk:plugin/config@0.1.0" "get" (func $config_get (param i32 i32 i32)))
  (memory (export "memory") 2)
  (data (i32.const 1024) "CAP_SYS_ADMIN")
  (data (i32.const 1037) "privileged container: CAP_SYS_ADMIN")
  (data (i32.const 1072) "SECRET")
  (data (i32.const 1078) "TOKEN")
  (data (i32.const 1083) "PASSWORD")
  (data (i32.const 1091) "AKIA")
  (data (i32.const 1095) "ghp_")
  (data (i32.const 1099) "glpat-")
  (data (i32.const 1105) "-----BEGIN")
  (data (i32.const 1115) "environment variable ")
  (data (i32.const 1136) " looks like a secret")
  (data (i32.const 1156) "allowed-registries")
  (data (i32.const 1174) "image reference is unknown; allowed registries: ")
  (data (i32.const 1222) "image ")
  (data (i32.const 1228) " is not from an allowed registry (")
  (data (i32.const 1262) ")")
  (data (i32.const 1263) "docker.io")
  (data (i32.const 1272) "localhost")
  (data (i32.const 1281) "CAP_NET_RAW")
  (data (i32.const 1292) "io.husk.policy")
  (data (i32.const 1306) "checked")
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

  ;; ASCII upper case of one byte.
  (func $upper (param $c i32) (result i32)
    (if (result i32) (i32.and (i32.ge_u (local.get $c) (i32.const 97)) (i32.le_u (local.get $c) (i32.const 122)))
      (then (i32.sub (local.get $c) (i32.const 32)))
      (else (local.get $c))))

  (func $contains (param $h i32) (param $hl i32) (param $n i32) (param $nl i32) (param $fold i32) (result i32)
    (local $i i32)
    (if (i32.gt_u (local.get $nl) (local.get $hl)) (then (return (i32.const 0))))
    (loop $next
      (if (call $match_at2 (local.get $h) (local.get $i) (local.get $n) (local.get $nl) (local.get $fold))
        (then (return (i32.const 1))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.le_u (local.get $i) (i32.sub (local.get $hl) (local.get $nl)))))
    (i32.const 0))

  ;; Whether h[at..at+nl] equals n (case-folding h to upper if $fold).
  (func $match_at2 (param $h i32) (param $at i32) (param $n i32) (param $nl i32) (param $fold i32) (result i32)
    (local $j i32) (local $c i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $j) (local.get $nl)))
        (local.set $c (i32.load8_u (i32.add (local.get $h) (i32.add (local.get $at) (local.get $j)))))
        (if (local.get $fold) (then (local.set $c (call $upper (local.get $c)))))
        (if (i32.ne (local.get $c) (i32.load8_u (i32.add (local.get $n) (local.get $j))))
          (then (return (i32.const 0))))
        (local.set $j (i32.add (local.get $j) (i32.const 1)))
        (br $next)))
    (i32.const 1))

  (func $starts (param $h i32) (param $hl i32) (param $n i32) (param $nl i32) (result i32)
    (if (i32.lt_u (local.get $hl) (local.get $nl)) (then (return (i32.const 0))))
    (call $match_at2 (local.get $h) (i32.const 0) (local.get $n) (local.get $nl) (i32.const 0)))

  (func $eq (param $a i32) (param $al i32) (param $b i32) (param $bl i32) (result i32)
    (if (i32.ne (local.get $al) (local.get $bl)) (then (return (i32.const 0))))
    (call $match_at2 (local.get $a) (i32.const 0) (local.get $b) (local.get $bl) (i32.const 0)))

  (func $has_byte (param $p i32) (param $l i32) (param $b i32) (result i32)
    (local $i i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $l)))
        (if (i32.eq (i32.load8_u (i32.add (local.get $p) (local.get $i))) (local.get $b))
          (then (return (i32.const 1))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  (func $is_space (param $c i32) (result i32)
    (i32.or (i32.eq (local.get $c) (i32.const 32))
      (i32.and (i32.ge_u (local.get $c) (i32.const 9)) (i32.le_u (local.get $c) (i32.const 13)))))

  ;; Whether the list (p, l) of strings contains the string (s, sl).
  (func $list_has (param $p i32) (param $l i32) (param $s i32) (param $sl i32) (result i32)
    (local $i i32) (local $e i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $l)))
        (local.set $e (i32.add (local.get $p) (i32.shl (local.get $i) (i32.const 3))))
        (if (call $eq (i32.load (local.get $e)) (i32.load offset=4 (local.get $e)) (local.get $s) (local.get $sl))
          (then (return (i32.const 1))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 0))

  ;; Appends (p, l) at the heap top; deny messages are built this way.
  (func $append (param $p i32) (param $l i32)
    (local $dst i32)
    (local.set $dst (call $realloc (i32.const 0) (i32.const 0) (i32.const 1) (local.get $l)))
    (memory.copy (local.get $dst) (local.get $p) (local.get $l)))

  ;; Denies with the bytes appended since $start.
  (func $deny_from (param $start i32) (result i32)
    (i32.store8 (i32.const 64) (i32.const 1))
    (i32.store (i32.const 68) (local.get $start))
    (i32.store (i32.const 72) (i32.sub (global.get $heap) (local.get $start)))
    (i32.const 64))

  ;; Whether the comma-separated list (p, l) has the entry (s, sl) once
  ;; trimmed; with $s = 0 whether it has any non-empty entry at all.
  (func $in_list (param $p i32) (param $l i32) (param $s i32) (param $sl i32) (result i32)
    (local $i i32) (local $a i32) (local $b i32)
    (block $done
      (loop $entry
        (br_if $done (i32.gt_u (local.get $i) (local.get $l)))
        (local.set $a (local.get $i))
        (block $end
          (loop $scan
            (br_if $end (i32.ge_u (local.get $i) (local.get $l)))
            (br_if $end (i32.eq (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 44)))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $scan)))
        (local.set $b (local.get $i))
        (block $t1 (loop $trim1
          (br_if $t1 (i32.ge_u (local.get $a) (local.get $b)))
          (br_if $t1 (i32.eqz (call $is_space (i32.load8_u (i32.add (local.get $p) (local.get $a))))))
          (local.set $a (i32.add (local.get $a) (i32.const 1)))
          (br $trim1)))
        (block $t2 (loop $trim2
          (br_if $t2 (i32.ge_u (local.get $a) (local.get $b)))
          (br_if $t2 (i32.eqz (call $is_space (i32.load8_u (i32.add (local.get $p) (i32.sub (local.get $b) (i32.const 1)))))))
          (local.set $b (i32.sub (local.get $b) (i32.const 1)))
          (br $trim2)))
        (if (i32.lt_u (local.get $a) (local.get $b))
          (then
            (if (i32.eqz (local.get $s)) (then (return (i32.const 1))))
            (if (call $eq (i32.add (local.get $p) (local.get $a)) (i32.sub (local.get $b) (local.get $a)) (local.get $s) (local.get $sl))
              (then (return (i32.const 1))))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $entry)))
    (i32.const 0))

  (func (export "husk:plugin/policy-hooks@0.1.0#on-create") (param $c i32) (result i32)
    (local $set i32) (local $i i32) (local $e i32) (local $np i32) (local $nl i32) (local $vp i32) (local $vl i32)
    (local $start i32) (local $ap i32) (local $al i32) (local $rp i32) (local $rl i32) (local $gp i32) (local $gl i32)
    (local $edits i32)
    ;; 1. privileged
    (if (i32.load8_u offset=88 (local.get $c))
      (then
        (loop $sets
          (local.set $e (i32.add (local.get $c) (i32.add (i32.const 92) (i32.shl (local.get $set) (i32.const 3)))))
          (if (call $list_has (i32.load (local.get $e)) (i32.load offset=4 (local.get $e)) (i32.const 1024) (i32.const 13))
            (then
              (i32.store8 (i32.const 64) (i32.const 1))
              (i32.store (i32.const 68) (i32.const 1037))
              (i32.store (i32.const 72) (i32.const 35))
              (return (i32.const 64))))
          (local.set $set (i32.add (local.get $set) (i32.const 1)))
          (br_if $sets (i32.lt_u (local.get $set) (i32.const 5))))))
    ;; 2. secrets in the environment
    (block $env_done
      (loop $env
        (br_if $env_done (i32.ge_u (local.get $i) (i32.load offset=40 (local.get $c))))
        (local.set $e (i32.add (i32.load offset=36 (local.get $c)) (i32.shl (local.get $i) (i32.const 4))))
        (local.set $np (i32.load (local.get $e)))
        (local.set $nl (i32.load offset=4 (local.get $e)))
        (local.set $vp (i32.load offset=8 (local.get $e)))
        (local.set $vl (i32.load offset=12 (local.get $e)))
        (if (i32.or (i32.or (i32.or
              (call $contains (local.get $np) (local.get $nl) (i32.const 1072) (i32.const 6) (i32.const 1))
              (call $contains (local.get $np) (local.get $nl) (i32.const 1078) (i32.const 5) (i32.const 1)))
              (i32.or (call $contains (local.get $np) (local.get $nl) (i32.const 1083) (i32.const 8) (i32.const 1))
                (call $starts (local.get $vp) (local.get $vl) (i32.const 1091) (i32.const 4))))
              (i32.or (i32.or
                (call $starts (local.get $vp) (local.get $vl) (i32.const 1095) (i32.const 4))
                (call $starts (local.get $vp) (local.get $vl) (i32.const 1099) (i32.const 6)))
                (call $contains (local.get $vp) (local.get $vl) (i32.const 1105) (i32.const 10) (i32.const 0))))
          (then
            (local.set $start (global.get $heap))
            (call $append (i32.const 1115) (i32.const 21))
            (call $append (local.get $np) (local.get $nl))
            (call $append (i32.const 1136) (i32.const 20))
            (return (call $deny_from (local.get $start)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $env)))
    ;; 3. allowed registries
    (local.set $ap (call $realloc (i32.const 0) (i32.const 0) (i32.const 4) (i32.const 12)))
    (call $config_get (i32.const 1156) (i32.const 18) (local.get $ap))
    (if (i32.load8_u (local.get $ap))
      (then
        (local.set $al (i32.load offset=8 (local.get $ap)))
        (local.set $ap (i32.load offset=4 (local.get $ap)))
        (if (call $in_list (local.get $ap) (local.get $al) (i32.const 0) (i32.const 0))
          (then
            (local.set $rp (i32.load offset=8 (local.get $c)))
            (local.set $rl (i32.load offset=12 (local.get $c)))
            (if (i32.eqz (local.get $rl))
              (then
                (local.set $start (global.get $heap))
                (call $append (i32.const 1174) (i32.const 48))
                (call $append (local.get $ap) (local.get $al))
                (return (call $deny_from (local.get $start)))))
            ;; registry(ref): the first component if it has '.' or ':' or is
            ;; localhost, else docker.io
            (local.set $gp (i32.const 1263))
            (local.set $gl (i32.const 9))
            (local.set $i (i32.const 0))
            (block $found
              (loop $slash
                (br_if $found (i32.ge_u (local.get $i) (local.get $rl)))
                (if (i32.eq (i32.load8_u (i32.add (local.get $rp) (local.get $i))) (i32.const 47))
                  (then
                    (if (i32.or (i32.or
                          (call $has_byte (local.get $rp) (local.get $i) (i32.const 46))
                          (call $has_byte (local.get $rp) (local.get $i) (i32.const 58)))
                          (call $eq (local.get $rp) (local.get $i) (i32.const 1272) (i32.const 9)))
                      (then (local.set $gp (local.get $rp)) (local.set $gl (local.get $i))))
                    (br $found)))
                (local.set $i (i32.add (local.get $i) (i32.const 1)))
                (br $slash)))
            (if (i32.eqz (call $in_list (local.get $ap) (local.get $al) (local.get $gp) (local.get $gl)))
              (then
                (local.set $start (global.get $heap))
                (call $append (i32.const 1222) (i32.const 6))
                (call $append (local.get $rp) (local.get $rl))
                (call $append (i32.const 1228) (i32.const 34))
                (call $append (local.get $ap) (local.get $al))
                (call $append (i32.const 1262) (i32.const 1))
                (return (call $deny_from (local.get $start)))))))))
    ;; 4. mutate: drop CAP_NET_RAW, annotate
    (local.set $edits (call $realloc (i32.const 0) (i32.const 0) (i32.const 8) (i32.const 80)))
    (i32.store8 (local.get $edits) (i32.const 1))
    (i32.store offset=8 (local.get $edits) (i32.const 1281))
    (i32.store offset=12 (local.get $edits) (i32.const 11))
    (i32.store8 offset=40 (local.get $edits) (i32.const 5))
    (i32.store offset=48 (local.get $edits) (i32.const 1292))
    (i32.store offset=52 (local.get $edits) (i32.const 14))
    (i32.store offset=56 (local.get $edits) (i32.const 1306))
    (i32.store offset=60 (local.get $edits) (i32.const 7))
    (i32.store8 (i32.const 64) (i32.const 2))
    (i32.store (i32.const 68) (local.get $edits))
    (i32.store (i32.const 72) (i32.const 2))
    (i32.const 64)))
