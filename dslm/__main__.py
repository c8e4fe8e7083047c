from dslm.cli import main

main()
