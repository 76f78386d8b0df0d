from p2pshard.cli import main

main()
