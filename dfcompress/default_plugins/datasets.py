from dfcompress import hookimpl


@hookimpl
def register_datasets(register):
    register("dfcompress.data.real:FolderSource", name="folder",
             summary="an ImageFolder directory or a .tar.gz of one (also accepted as a bare path)")
    register("dfcompress.data.real:DigitsSource", name="digits",
             summary="scikit-learn's bundled handwritten digits: digits[:train|test]")
    register("dfcompress.data.real:Cifar10Source", name="cifar10",
             summary="CIFAR-10 ImageFolder tarball: cifar10:PATH[:train|test]")
