from copymachine.cli import main

main()
