fn main() {
    dlock::main()
}
