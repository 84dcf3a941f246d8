from spkidd.cli import main

main()
