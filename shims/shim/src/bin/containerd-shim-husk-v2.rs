fn main() {
    husk_shim::main(husk_shim::Profile::Native)
}
